"""The full pipeline's last leg: the Snowpipe emulator's ledger of a real agent run → the pipe's
transformation → the task graph → FCT_ACCESS_EVENTS.

Run by ``tests/tests/full_pipeline.rs``, which starts simulated readers and the real agent binary
against the emulator, then hands over two files through the environment:

* ``BADGE_PIPELINE_LEDGER`` — the emulator's committed rows, NDJSON in the shape of its
  ``--ledger-file`` / ``/admin/ledger`` (``{"pipe", "channel", "offset_token", …, "row": {…}}``);
* ``BADGE_PIPELINE_SWIPES`` — what the simulated readers presented: a JSON list of
  ``{"reader_id", "credential"}``, one entry per swipe.

Without them the tests fail (never skip): ``sql_model.rs`` leaves this file out of its run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import badge_sql_harness as h
from badge_sql_harness import load_rows_through_pipe, query, run_dag

LEDGER_ENV = "BADGE_PIPELINE_LEDGER"
SWIPES_ENV = "BADGE_PIPELINE_SWIPES"

RAW = "BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS"
STG = "BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS"
FCT = "BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS"


class Run:
    """One agent run as the Rust side recorded it."""

    def __init__(self, ledger_path: Path, swipes_path: Path) -> None:
        self.ledger_bytes = ledger_path.read_bytes()
        self.ledger = [json.loads(line) for line in self.ledger_bytes.decode().splitlines() if line.strip()]
        self.rows = {e["row"]["event_id"]: e["row"] for e in self.ledger}
        self.swipes = json.loads(swipes_path.read_text())
        # Reference data covering part of what was swiped, so known and unknown members both occur:
        # every other credential has a holder, and only the first reader is in REF_READERS.
        credentials = sorted({s["credential"] for s in self.swipes})
        readers = sorted({s["reader_id"] for s in self.swipes})
        self.known_credentials = set(credentials[::2])
        self.known_readers = set(readers[:1])


@pytest.fixture(scope="module")
def agent_run() -> Run:
    paths = {name: os.environ.get(name) for name in (LEDGER_ENV, SWIPES_ENV)}
    missing = [name for name, value in paths.items() if not value]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: this file checks a real agent run; run it with "
            "`cargo test -p badge-tests --test full_pipeline`",
            pytrace=False,
        )
    run = Run(Path(paths[LEDGER_ENV]), Path(paths[SWIPES_ENV]))
    # The scenario must exercise both sides of every join, else the assertions below prove less.
    assert len(run.swipes) >= 4, "too few swipes to check anything"
    assert len({s["reader_id"] for s in run.swipes}) >= 2, "need a known and an unknown reader"
    return run


def load_reference(conn, run: Run) -> None:
    for i, credential in enumerate(sorted(run.known_credentials)):
        h._exec(
            conn,
            "INSERT INTO BADGE_DB.STAGING_LAYER.REF_BADGE_HOLDERS "
            "(credential, person_id, person_name, department, status, effective_from) "
            "VALUES (%s, %s, %s, 'Ops', 'active', '2020-01-01 00:00:00')",
            (credential, f"P-{i}", f"Person {i}"),
        )
    for reader_id in sorted(run.known_readers):
        h._exec(
            conn,
            "INSERT INTO BADGE_DB.STAGING_LAYER.REF_READERS "
            "(reader_id, door_id, door_name, zone_id, zone_name, site_id, site_name, security_level, effective_from) "
            "VALUES (%s, %s, 'Door', %s, 'Zone', 'HQ', 'HQ', 1, '2020-01-01 00:00:00')",
            (reader_id, f"DOOR-{reader_id}", f"ZONE-{reader_id}"),
        )


def facts(conn) -> list[dict[str, Any]]:
    return query(
        conn,
        f"""SELECT f.*, u.credential AS dim_credential, u.person_id, z.reader_id AS dim_reader_id,
                   z.zone_id AS dim_zone_id
            FROM {FCT} f
            LEFT JOIN BADGE_DB.ANALYTICS_LAYER.DIM_USERS u ON u.user_sk = f.user_sk
            LEFT JOIN BADGE_DB.ANALYTICS_LAYER.DIM_ZONES z ON z.zone_sk = f.zone_sk""",
    )


def assert_one_fact_per_swipe(conn, run: Run) -> None:
    got = facts(conn)
    ids = [f["event_id"] for f in got]
    dupes = [e for e, n in Counter(ids).items() if n > 1]
    assert not dupes, f"event_ids in the fact more than once: {dupes[:5]}"
    assert set(ids) == set(run.rows), (
        f"fact vs ledger: missing {sorted(set(run.rows) - set(ids))[:5]}, "
        f"extra {sorted(set(ids) - set(run.rows))[:5]}"
    )
    # Against what the readers presented, not only against the ledger: nothing lost, nothing invented.
    presented = Counter((s["reader_id"], s["credential"]) for s in run.swipes)
    landed = Counter((f["reader_id"], f["credential"]) for f in got)
    assert landed == presented, f"missing {presented - landed}, extra {landed - presented}"
    for f in got:
        row = run.rows[f["event_id"]]
        assert (f["gateway_id"], f["seq"], f["reader_id"], f["credential"]) == (
            row["gateway_id"], row["seq"], row["reader_id"], row["credential"]
        )
        assert (f["agent_zone_id"], f["door_id"], f["direction"]) == (row["zone_id"], row["door_id"], row["direction"])
        assert (f["facility_code"], f["card_number"], f["event_type"]) == (
            row["facility_code"], row["card_number"], "card"
        )
        assert f["swiped_at"] == datetime.fromisoformat(row["swiped_at"]).replace(tzinfo=None)
        assert f["is_fault"] is False


def test_every_swipe_of_the_agent_run_is_one_fact(conn, agent_run: Run) -> None:
    # The agent streamed into the pipe the model defines.
    pipe = h.deployment(conn).pipe.name
    assert {e["pipe"].upper() for e in agent_run.ledger} == {pipe}
    load_reference(conn, agent_run)
    assert load_rows_through_pipe(conn, agent_run.ledger_bytes) == len(agent_run.ledger)
    assert run_dag(conn).state == "SUCCEEDED"
    assert run_dag(conn).state == "SKIPPED"  # the stream is consumed: nothing left over
    assert_one_fact_per_swipe(conn, agent_run)

    got = facts(conn)
    for f in got:
        if f["credential"] in agent_run.known_credentials:
            assert f["user_sk"] > 0 and f["dim_credential"] == f["credential"], f
            assert f["person_id"].startswith("P-")
        else:
            assert f["user_sk"] == -1, f  # unknown badge -> unknown member
        if f["reader_id"] in agent_run.known_readers:
            assert f["zone_sk"] > 0 and f["dim_reader_id"] == f["reader_id"], f
            assert f["dim_zone_id"] == f"ZONE-{f['reader_id']}"
        else:
            assert f["zone_sk"] == -1, f  # unknown reader -> unknown member
    assert {f["user_sk"] > 0 for f in got} == {True, False}, "need known and unknown badges"
    assert {f["zone_sk"] > 0 for f in got} == {True, False}, "need known and unknown readers"


def test_redelivered_ledger_still_gives_one_fact_per_swipe(conn, agent_run: Run) -> None:
    n, delivered = len(agent_run.rows), len(agent_run.ledger)
    # Every row twice inside one batch (the dedup inside a batch), then once more as a later batch
    # (a resend after a crash: rows already staged).
    load_rows_through_pipe(conn, agent_run.ledger_bytes + agent_run.ledger_bytes)
    assert run_dag(conn).state == "SUCCEEDED"
    load_rows_through_pipe(conn, agent_run.ledger_bytes)
    assert run_dag(conn).state == "SUCCEEDED"
    assert query(conn, f"SELECT COUNT(*) AS n FROM {RAW}") == [{"n": 3 * delivered}]
    assert query(conn, f"SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM {STG}") == [{"n": n, "d": n}]
    assert_one_fact_per_swipe(conn, agent_run)
    dq = {r["metric"]: r["metric_value"] for r in query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_DATA_QUALITY")}
    assert dq["raw_duplicate_rows"] == 3 * delivered - n
