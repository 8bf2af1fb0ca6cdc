#!/usr/bin/env python3
"""Throughput of Snowflake's official `snowpipe-streaming` SDK (1.9.1) against the local emulator.

Usage: bench.py CONFIG_JSON

CONFIG_JSON holds: url, account, user, role, private_key_file, db, schema, pipe, channel,
rows_file (NDJSON, one row per line, row i has offset token i, 1-based), flush_rows, poll_ms,
timeout_s, and optionally properties (extra client properties).

Run by badge-tests' `client_vs_sdk` bench, which writes the rows its own client sends, so both send
the same bytes: the SDK serialises dicts with msgspec, and every row is checked to re-encode to the
exact line read.

The rows go in as append_rows of flush_rows rows, each followed by wait_for_flush. Why: when one
flush holds more than about 1 MiB (observed: 4,150 rows of 251 bytes stay on REST, 4,177 do not),
1.9.1 leaves rowset mode (REST appends, what our client does) for file mode (upload to the stage,
then register the file), which the emulator does not offer (its 16-byte pipe key makes that fail at
once). Given everything at once, or flushed in the background, the SDK buffers more than that.

Timing (time.perf_counter; t0_epoch_ms is time.time() at the same moment, to compare with the
emulator's commit timestamps) starts just before the first append_rows:
  appended_s           until the last wait_for_flush returns (every append answered)
  client_cpu_s         CPU time of this process (Python and the SDK's threads) in that window
  observed_committed_s until get_channel_status(), polled every poll_ms, shows the last offset.
The SDK serves channel status from a cache refreshed once a second
(channel_status_cache_refresh_interval_seconds: whole seconds; 0 makes it refresh in a busy loop),
so the observed commit lags the real one by up to a second; the bench takes the commit moment from
the emulator's ledger instead.

The last stdout line is `RESULT <json>`; failures raise (non-zero exit, traceback on stderr).
Run only with HTTPS_PROXY pointing at a dead loopback port, NO_PROXY=127.0.0.1 and SSL_CERT_FILE set
to the emulator's CA, so nothing can leave the machine.
"""

import json
import sys
import time

import msgspec

from snowflake.ingest.streaming import StreamingIngestClient


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    with open(cfg["rows_file"], "rb") as f:
        lines = f.read().splitlines()
    rows = [msgspec.json.decode(line) for line in lines]
    enc = msgspec.json.Encoder()
    for i, (line, row) in enumerate(zip(lines, rows), start=1):
        if enc.encode(row) != line:
            raise AssertionError(f"row {i} would not be sent byte-identical by the SDK")
    row_bytes = sum(len(line) for line in lines)
    del lines
    n = len(rows)
    log(f"bench.py: {n} rows loaded ({row_bytes} bytes)")

    with open(cfg["private_key_file"]) as f:
        pem = f.read()
    props = {"account": cfg["account"], "user": cfg["user"], "url": cfg["url"],
             "role": cfg["role"], "private_key": pem}
    props.update(cfg.get("properties", {}))
    client = StreamingIngestClient("client-vs-sdk-bench", cfg["db"], cfg["schema"], cfg["pipe"],
                                   properties=props)
    ch, st = client.open_channel(cfg["channel"])
    if st.latest_committed_offset_token is not None:
        raise AssertionError(f"channel not fresh: committed {st.latest_committed_offset_token}")

    chunk = cfg["flush_rows"]
    poll = cfg["poll_ms"] / 1000.0
    deadline = time.monotonic() + cfg["timeout_s"]
    status_polls = 0

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    t0_epoch_ms = time.time() * 1000.0
    for start in range(0, n, chunk):
        part = rows[start:start + chunk]
        ch.append_rows(part, str(start + 1), str(start + len(part)))
        ch.wait_for_flush(timeout_seconds=cfg["timeout_s"])
    t_appended = time.perf_counter()
    client_cpu_s = time.process_time() - cpu0
    while True:
        st = ch.get_channel_status()
        status_polls += 1
        tok = st.latest_committed_offset_token
        if tok is not None and int(tok) >= n:
            break
        if st.status_code != "SUCCESS":
            raise AssertionError(f"channel status {st.status_code}: {st.last_error_message}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not committed in time: committed {tok} of {n}")
        time.sleep(poll)
    t_committed = time.perf_counter()

    out = {
        "rows": n,
        "row_bytes": row_bytes,
        "t0_epoch_ms": t0_epoch_ms,
        "appended_s": t_appended - t0,
        "client_cpu_s": client_cpu_s,
        "observed_committed_s": t_committed - t0,
        "status_polls": status_polls,
        "committed_offset_token": tok,
        "rows_inserted_count": st.rows_inserted_count,
        "rows_error_count": st.rows_error_count,
    }
    ch.close()
    client.close()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
