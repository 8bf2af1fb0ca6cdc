#!/usr/bin/env python3
"""Drive Snowflake's official `snowpipe-streaming` SDK (1.9.1) against the local emulator.

Usage: driver.py SCENARIO CONFIG_JSON

CONFIG_JSON holds: url, account, user, role, private_key_file, db, schema, pipe, channel,
and per scenario: first, last (row sequence numbers), compression (bool).

Scenarios:
  basic   open, append_row + append_rows, wait_for_commit, status, bulk status incl. an unknown
          channel, close, reopen, drop, client close
  crash   open, append rows first..last as one batch, wait until flushed, then os._exit(17)
          before the (delayed) commit
  resume  open (the SDK retries the emulator's 409 while data is uncommitted), resume from the
          committed offset + 1 up to last, one append per row, wait for each commit
  stepped open, append rows first..last one at a time, waiting for each commit (used with faults)
  drop    drop the channel and check it is gone
  invalidate  append row first (the test injects a 404 with a Snowflake code), observe the SDK's
          error, reopen, resume from the committed offset up to last
  fence   client A opens and commits row 1; client B reopens the same channel (bumping the client
          sequencer); A's next append must fail (stale continuation token) while B resumes to last

The last stdout line is `RESULT <json>`; failures raise (non-zero exit, traceback on stderr).
Run only with HTTPS_PROXY pointing at a dead loopback port, NO_PROXY=127.0.0.1 and SSL_CERT_FILE set
to the emulator's CA, so nothing can leave the machine.
"""

import json
import os
import sys
import time

from snowflake.ingest.streaming import StreamingIngestClient, StreamingIngestError


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def row(i):
    return {"badge_id": f"B-{i}", "reader_id": "r1", "swipe_seq": i, "swiped_at": "2026-11-22T05:00:00Z"}


def status_dict(s):
    return {
        "channel_name": s.channel_name,
        "status_code": s.status_code,
        "latest_committed_offset_token": s.latest_committed_offset_token,
        "rows_inserted_count": s.rows_inserted_count,
        "rows_parsed_count": s.rows_parsed_count,
        "rows_error_count": s.rows_error_count,
        "last_error_message": s.last_error_message,
    }


def at_least(n):
    return lambda tok: tok is not None and int(tok) >= n


def make_client(cfg, name):
    with open(cfg["private_key_file"]) as f:
        pem = f.read()
    props = {
        "account": cfg["account"],
        "user": cfg["user"],
        "url": cfg["url"],
        "role": cfg.get("role", "INGEST_ROLE"),
        "private_key": pem,
    }
    if not cfg.get("compression", True):
        props["enable_rowset_compression"] = "false"
    return StreamingIngestClient(name, cfg["db"], cfg["schema"], cfg["pipe"], properties=props)


def basic(cfg):
    ch_name = cfg["channel"]
    client = make_client(cfg, "conformance-basic")
    ch, st = client.open_channel(ch_name)
    out = {"open_committed": st.latest_committed_offset_token, "open_status": st.status_code}
    ch.append_row(row(1), "1")
    ch.append_rows([row(2), row(3)], "2", "3")
    ch.wait_for_commit(at_least(3), timeout_seconds=30)
    out["status"] = status_dict(ch.get_channel_status())
    out["committed_tokens"] = client.get_latest_committed_offset_tokens([ch_name, "nochan"])
    ch.close()
    ch2, st2 = client.open_channel(ch_name)
    out["reopen_committed"] = st2.latest_committed_offset_token
    ch2.close()
    client.drop_channel(ch_name)
    out["after_drop"] = client.get_latest_committed_offset_tokens([ch_name])
    client.close()
    return out


def crash(cfg):
    client = make_client(cfg, "conformance-crash")
    ch, st = client.open_channel(cfg["channel"])
    first, last = cfg["first"], cfg["last"]
    ch.append_rows([row(i) for i in range(first, last + 1)], str(first), str(last))
    ch.wait_for_flush(timeout_seconds=20)
    print("RESULT " + json.dumps({"open_committed": st.latest_committed_offset_token, "sent": [first, last]}), flush=True)
    os._exit(17)  # crash before the commit: no close, no flush of anything else


def resume(cfg):
    client = make_client(cfg, "conformance-resume")
    t0 = time.time()
    ch, st = client.open_channel(cfg["channel"])
    committed = st.latest_committed_offset_token
    out = {"open_committed": committed, "open_seconds": round(time.time() - t0, 2)}
    start = (int(committed) if committed is not None else 0) + 1
    out["resumed_at"] = start
    for i in range(start, cfg["last"] + 1):
        ch.append_row(row(i), str(i))
    ch.wait_for_commit(at_least(cfg["last"]), timeout_seconds=30)
    out["status"] = status_dict(ch.get_channel_status())
    ch.close()
    client.close()
    return out


def stepped(cfg):
    client = make_client(cfg, "conformance-stepped")
    ch, st = client.open_channel(cfg["channel"])
    out = {"open_committed": st.latest_committed_offset_token}
    for i in range(cfg["first"], cfg["last"] + 1):
        ch.append_row(row(i), str(i))
        ch.wait_for_commit(at_least(i), timeout_seconds=60)
    out["status"] = status_dict(ch.get_channel_status())
    ch.close()
    client.close()
    return out


def drop(cfg):
    client = make_client(cfg, "conformance-drop")
    client.drop_channel(cfg["channel"])
    out = {"after_drop": client.get_latest_committed_offset_tokens([cfg["channel"]])}
    client.close()
    return out


def wait_for_error(ch, seconds=30):
    """Flush and wait until the SDK reports the channel's failure; returns the error text."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            ch.wait_for_flush(timeout_seconds=5)
        except StreamingIngestError as e:
            return f"{e.error_code}: {e.message}"
        except TimeoutError:
            pass
        if ch.is_closed():
            return "channel closed"
        time.sleep(0.2)
    raise AssertionError("the SDK never reported the failed append")


def invalidate(cfg):
    client = make_client(cfg, "conformance-invalidate")
    ch, st = client.open_channel(cfg["channel"])
    ch.append_row(row(cfg["first"]), str(cfg["first"]))
    out = {"error": wait_for_error(ch)}
    try:
        ch.close(wait_for_flush=False)
    except StreamingIngestError as e:
        out["close_error"] = str(e.error_code)
    ch2, st2 = client.open_channel(cfg["channel"])
    committed = st2.latest_committed_offset_token
    out["reopen_committed"] = committed
    start = (int(committed) if committed is not None else 0) + 1
    for i in range(start, cfg["last"] + 1):
        ch2.append_row(row(i), str(i))
    ch2.wait_for_commit(at_least(cfg["last"]), timeout_seconds=30)
    out["status"] = status_dict(ch2.get_channel_status())
    ch2.close()
    client.close()
    return out


def fence(cfg):
    a = make_client(cfg, "conformance-fence-a")
    ch_a, _ = a.open_channel(cfg["channel"])
    ch_a.append_row(row(1), "1")
    ch_a.wait_for_commit(at_least(1), timeout_seconds=30)
    b = make_client(cfg, "conformance-fence-b")
    ch_b, st_b = b.open_channel(cfg["channel"])
    out = {"b_open_committed": st_b.latest_committed_offset_token}
    ch_a.append_row(row(2), "2")  # the leftover writer: must be fenced
    out["a_error"] = wait_for_error(ch_a)
    start = int(st_b.latest_committed_offset_token) + 1
    for i in range(start, cfg["last"] + 1):
        ch_b.append_row(row(i), str(i))
    ch_b.wait_for_commit(at_least(cfg["last"]), timeout_seconds=30)
    out["status"] = status_dict(ch_b.get_channel_status())
    ch_b.close()
    b.close()
    try:
        a.close(wait_for_flush=False)
    except StreamingIngestError as e:
        out["a_close_error"] = str(e.error_code)
    return out


def main():
    scenario, cfg_path = sys.argv[1], sys.argv[2]
    with open(cfg_path) as f:
        cfg = json.load(f)
    fn = {"basic": basic, "crash": crash, "resume": resume, "stepped": stepped, "drop": drop,
          "invalidate": invalidate, "fence": fence}[scenario]
    out = fn(cfg)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
