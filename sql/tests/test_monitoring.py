"""Monitoring views on known rows with exact numbers: redeliveries counted alike everywhere,
gateway health on distinct events, trusted clocks and heartbeats, stream lag/staleness, task-graph
state, raw -> staging -> fact reconciliation, SCD2 health and query efficiency. Views over account
telemetry are fed through the harness's stand-in tables (TELEMETRY_STUBS)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import badge_sql_harness as h
from badge_sql_harness import agent_row, load_rows_through_pipe, query, run_dag
from test_model import ALICE, BOB, DIM_USERS, holder, reader

MON = "BADGE_DB.ANALYTICS_LAYER"
RAW = "BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS"


def dq(conn) -> dict[str, int]:
    return {r["metric"]: r["metric_value"] for r in query(conn, f"SELECT * FROM {MON}.MON_DATA_QUALITY")}


def heartbeat(gw: str, seq: int, at: str, *, depth: int = 0, oldest: int = 0, synced: bool = True,
              readers: dict | None = None, version: str = "0.3.0") -> dict:
    readers = readers if readers is not None else {"r1": "up"}
    row = agent_row(gw, seq, at, reader_id="_gateway", zone_id=None, door_id=None, direction=None,
                    event_type="heartbeat", clock_synced=synced, agent_version=version)
    row["detail"] = json.dumps({"buffer_depth": depth, "oldest_unsent_age_s": oldest, "skipped_heartbeats": 0,
                                "readers": readers, "readers_down": sum(v != "up" for v in readers.values())},
                               separators=(",", ":"))
    return row


def now_iso(minutes: int = 0) -> str:
    t = datetime.utcnow() + timedelta(minutes=minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_a_redelivery_minutes_later_counts_in_the_rate_view_as_in_data_quality(conn) -> None:
    e1 = agent_row("gw-a", 1, now_iso(-10), credential=ALICE)
    e2 = agent_row("gw-a", 2, now_iso(-9), credential=ALICE)
    load_rows_through_pipe(conn, [e1, e2])
    # The crash-resume copy of e1 lands three minutes after the first one.
    load_rows_through_pipe(conn, [e1])
    h._exec(conn, f"UPDATE {RAW} SET ingested_at = DATEADD('minute', 3, ingested_at) "
                  f"WHERE rowid = (SELECT MAX(rowid) FROM {RAW})")
    run_dag(conn)
    per_minute = query(conn, f"SELECT rows_ingested, redelivered_rows FROM {MON}.MON_INGESTION_RATE ORDER BY minute_start")
    assert [(r["rows_ingested"], r["redelivered_rows"]) for r in per_minute] == [(2, 0), (1, 1)]
    assert sum(r["redelivered_rows"] for r in per_minute) == dq(conn)["raw_duplicate_rows"] == 1
    rate = query(conn, f"SELECT first_deliveries, heartbeat_rows FROM {MON}.MON_INGESTION_RATE ORDER BY minute_start")
    assert [(r["first_deliveries"], r["heartbeat_rows"]) for r in rate] == [(2, 0), (0, 0)]


def test_gateway_health_counts_distinct_events_and_trusts_only_synced_clocks(conn) -> None:
    synced = agent_row("gw-a", 1, now_iso(-30), credential=ALICE)
    fault = agent_row("gw-a", 2, now_iso(-20), event_type="reader_fault", detail="parity", direction=None)
    unsynced = agent_row("gw-a", 3, now_iso(-2), credential=ALICE, clock_synced=False)  # plausible, untrusted
    future = agent_row("gw-a", 4, "2099-01-01T00:00:00.000Z", credential=ALICE, clock_synced=False)
    load_rows_through_pipe(conn, [synced, fault, fault, unsynced, future, synced])  # two redeliveries
    run_dag(conn)
    g = query(conn, f"SELECT * FROM {MON}.MON_GATEWAY_HEALTH")
    assert len(g) == 1
    g = g[0]
    assert (g["events_24h"], g["reader_faults_24h"], g["unsynced_clock_24h"], g["error_count_24h"]) == (4, 1, 2, 1)
    assert g["last_swiped_at"] == datetime.fromisoformat(fault["swiped_at"][:-1])  # not 2099, not the unsynced one
    assert g["last_offset_token"] == 4 and g["seq_gaps"] == 0
    assert g["heartbeats_24h"] == 0 and g["last_heartbeat_at"] is None and g["buffer_depth"] is None


def test_heartbeats_drive_gateway_health_and_stay_out_of_fact_and_access_counts(conn) -> None:
    reader(conn, "r1", "LOBBY", "2020-01-01 00:00:00")
    load_rows_through_pipe(conn, [
        agent_row("gw-q", 1, now_iso(-40), credential=ALICE, reader_id="r1"),
        heartbeat("gw-q", 2, now_iso(-10), depth=7, oldest=3),
        heartbeat("gw-q", 3, now_iso(-5), depth=2, oldest=1, readers={"r1": "up", "r2": "down"}),
        heartbeat("gw-q", 3, now_iso(-5), depth=2, oldest=1, readers={"r1": "up", "r2": "down"}),  # redelivered
    ])
    # The only swipe landed 40 minutes ago (a quiet door): heartbeats keep the gateway not silent.
    h._exec(conn, f"UPDATE {RAW} SET ingested_at = DATEADD('minute', -40, ingested_at) WHERE seq = 1")
    run_dag(conn)
    assert query(conn, f"SELECT COUNT(*) AS n FROM {MON}.FCT_ACCESS_EVENTS") == [{"n": 1}]
    occ = query(conn, f"SELECT SUM(access_events) AS a FROM {MON}.DT_ZONE_HOURLY_OCCUPANCY")
    assert occ == [{"a": 1}]
    g = query(conn, f"SELECT * FROM {MON}.MON_GATEWAY_HEALTH")[0]
    assert (g["heartbeats_24h"], g["events_24h"], g["buffer_depth"], g["oldest_unsent_age_s"], g["readers_down"]) == (2, 1, 2, 1, 1)
    assert g["agent_version"] == "0.3.0" and g["heartbeat_clock_synced"] is True
    assert json.loads(g["reader_states"]) == {"r1": "up", "r2": "down"}
    assert g["is_silent"] is False and g["minutes_since_last_row"] == 0
    hb = query(conn, f"SELECT seq, buffer_depth FROM {MON}.MON_GATEWAY_HEARTBEATS ORDER BY seq")
    assert [(r["seq"], r["buffer_depth"]) for r in hb] == [(2, 7), (3, 2)]
    d = dq(conn)
    assert d["staged_not_in_fact"] == 0 and d["unknown_badge_events"] == 1
    # Nothing at all for longer than silent_gateway_minutes (15): silent.
    h._exec(conn, f"UPDATE {RAW} SET ingested_at = DATEADD('minute', -16, ingested_at)")
    assert query(conn, f"SELECT is_silent FROM {MON}.MON_GATEWAY_HEALTH") == [{"is_silent": True}]


def test_stream_status_lag_staleness_and_backlog(conn) -> None:
    load_rows_through_pipe(conn, [agent_row("gw-a", 1, now_iso(), credential=ALICE)])
    run_dag(conn)
    load_rows_through_pipe(conn, [agent_row("gw-a", 2, now_iso(), credential=ALICE),
                                  agent_row("gw-a", 3, now_iso(), credential=ALICE)])  # not yet processed
    h._exec(conn, f"INSERT INTO {MON}.MON_STREAM_OFFSET SELECT 'S', DATEADD('minute', -90, SYSDATE()), TRUE")
    s = query(conn, f"SELECT * FROM {MON}.MON_STREAM_STATUS")[0]
    assert (s["lag_minutes"], s["is_stale"], s["stale_soon"], s["backlog_rows"]) == (90, False, False, 2)
    h._exec(conn, f"UPDATE {MON}.MON_STREAM_OFFSET SET offset_ts = DATEADD('day', -13, offset_ts)")
    s = query(conn, f"SELECT is_stale, stale_soon FROM {MON}.MON_STREAM_STATUS")[0]
    assert (s["is_stale"], s["stale_soon"]) == (False, True)
    h._exec(conn, f"UPDATE {MON}.MON_STREAM_OFFSET SET offset_ts = DATEADD('day', -2, offset_ts)")
    assert query(conn, f"SELECT is_stale FROM {MON}.MON_STREAM_STATUS") == [{"is_stale": True}]
    run_dag(conn)
    assert query(conn, f"SELECT backlog_rows FROM {MON}.MON_STREAM_STATUS") == [{"backlog_rows": 0}]


def _tasks(conn, root_state: str, runs: list[tuple[str, str, int]]) -> list[dict]:
    names = ["TASK_BADGE_DEDUP", "TASK_BADGE_DIM_USERS", "TASK_BADGE_DIM_ZONES", "TASK_BADGE_FCT_ACCESS"]
    h._exec(conn, f"DELETE FROM {MON}.MON_TASK_GRAPH_TASKS")
    h._exec(conn, f"DELETE FROM {MON}.MON_TASK_HISTORY")
    for n in names:
        preds = "[]" if n == "TASK_BADGE_DEDUP" else '["BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP"]'
        state = root_state if n == "TASK_BADGE_DEDUP" else "started"
        h._exec(conn, f"INSERT INTO {MON}.MON_TASK_GRAPH_TASKS (task_name, task_state, predecessors) "
                      f"SELECT 'BADGE_DB.STAGING_LAYER.{n}', '{state}', PARSE_JSON('{preds}')")
    for task, state, minutes_ago in runs:
        h._exec(conn, f"INSERT INTO {MON}.MON_TASK_HISTORY (task_name, state, scheduled_time) "
                      f"SELECT '{task}', '{state}', DATEADD('minute', -{minutes_ago}, SYSDATE())")
    return query(conn, f"SELECT * FROM {MON}.MON_TASK_GRAPH_STATE ORDER BY task_name")


def test_task_graph_state_shows_a_suspended_root_as_such(conn) -> None:
    ok = _tasks(conn, "started", [("TASK_BADGE_DEDUP", "SUCCEEDED", 1)])
    assert {r["graph_state"] for r in ok} == {"RUNNING"}
    assert [r["is_root"] for r in ok] == [True, False, False, False]
    suspended = _tasks(conn, "suspended", [("TASK_BADGE_DEDUP", "SUCCEEDED", 5)])  # no failure at all
    assert {r["graph_state"] for r in suspended} == {"SUSPENDED"}
    auto = _tasks(conn, "suspended", [("TASK_BADGE_DEDUP", "SUCCEEDED", 30)] +
                  [("TASK_BADGE_DEDUP", "FAILED", m) for m in (20, 10, 5)])
    assert {r["graph_state"] for r in auto} == {"AUTO_SUSPENDED"}
    assert auto[0]["failed_runs_24h"] == 3 and auto[0]["last_run_state"] == "FAILED"
    failing = _tasks(conn, "started", [("TASK_BADGE_DEDUP", "SUCCEEDED", 2), ("TASK_BADGE_FCT_ACCESS", "FAILED", 2)])
    assert {r["graph_state"] for r in failing} == {"FAILING"}


def test_reconciliation_per_gateway_and_day_agrees_and_shows_what_is_missing(conn) -> None:
    e = [agent_row("gw-a", i, now_iso(), credential=ALICE) for i in (1, 2, 3)]
    load_rows_through_pipe(conn, [*e, e[0], heartbeat("gw-a", 4, now_iso()), agent_row("gw-b", 1, now_iso())])
    run_dag(conn)
    rec = query(conn, f"SELECT * FROM {MON}.MON_RECONCILIATION ORDER BY gateway_id")
    got = [(r["gateway_id"], r["raw_rows"], r["raw_events"], r["staged_events"], r["staged_heartbeats"],
            r["fact_events"], r["is_reconciled"]) for r in rec]
    assert got == [("gw-a", 5, 4, 4, 1, 3, True), ("gw-b", 1, 1, 1, 0, 1, True)]
    h._exec(conn, f"DELETE FROM {MON}.FCT_ACCESS_EVENTS WHERE event_id = 'gw-a:2'")  # a lost fact row
    load_rows_through_pipe(conn, [agent_row("gw-b", 2, now_iso())])  # landed, graph not run yet
    rec = {r["gateway_id"]: r for r in query(conn, f"SELECT * FROM {MON}.MON_RECONCILIATION")}
    assert (rec["gw-a"]["staged_not_in_fact"], rec["gw-a"]["is_reconciled"]) == (1, False)
    assert (rec["gw-b"]["raw_not_staged"], rec["gw-b"]["is_reconciled"]) == (1, False)


def test_scd2_health_reports_multiple_current_rows_gaps_and_overlaps(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    holder(conn, ALICE, "Sales", "2025-03-01 00:00:00")
    holder(conn, BOB, "Ops", "2025-01-01 00:00:00", person="P-BOB")
    load_rows_through_pipe(conn, [agent_row("gw-a", 1, now_iso(), credential=ALICE)])
    run_dag(conn)
    clean = query(conn, f"SELECT * FROM {MON}.MON_SCD2_HEALTH ORDER BY dimension")
    assert [(r["dimension"], r["business_keys"], r["versions"], r["keys_with_multiple_current"], r["gaps"],
             r["overlaps"]) for r in clean] == [("DIM_USERS", 2, 3, 0, 0, 0), ("DIM_ZONES", 0, 0, 0, 0, 0)]
    # Break it by hand: Alice's first version ends early (gap) and stays current; Bob gets an overlap.
    h._exec(conn, f"UPDATE {DIM_USERS} SET valid_to = '2025-02-01', is_current = TRUE "
                  f"WHERE credential = %s AND department = 'R&D'", (ALICE,))
    h._exec(conn, f"INSERT INTO {DIM_USERS} (credential, department, attr_hash, valid_from, valid_to, is_current) "
                  f"VALUES (%s, 'Ops2', 'x', '2025-06-01', NULL, FALSE)", (BOB,))
    issues = query(conn, f"SELECT dimension, business_key, issue, valid_from FROM {MON}.MON_SCD2_ISSUES "
                         "ORDER BY business_key, issue, valid_from")
    assert [(r["business_key"], r["issue"], r["valid_from"]) for r in issues] == [
        (ALICE, "GAP", datetime(2025, 3, 1)),
        (ALICE, "MULTIPLE_CURRENT", datetime(2025, 1, 1)),
        (ALICE, "MULTIPLE_CURRENT", datetime(2025, 3, 1)),
        (BOB, "OPEN_NOT_LAST", datetime(2025, 1, 1)),
        (BOB, "OVERLAP", datetime(2025, 6, 1)),
    ]
    u = query(conn, f"SELECT * FROM {MON}.MON_SCD2_HEALTH WHERE dimension = 'DIM_USERS'")[0]
    assert (u["keys_with_multiple_current"], u["gaps"], u["overlaps"], u["open_not_last"]) == (1, 1, 1, 1)


def test_query_efficiency_partitions_scanned_vs_total(conn) -> None:
    for qid, scanned, total in (("q1", 2, 100), ("q2", 100, 100), ("q3", 8, 100)):
        h._exec(conn, f"INSERT INTO {MON}.MON_FACT_QUERIES (query_id, start_time, query_type, partitions_scanned, "
                      f"partitions_total, bytes_scanned, total_elapsed_ms) "
                      f"SELECT '{qid}', '2025-05-01 10:00:00', 'SELECT', {scanned}, {total}, 1000, 50")
    q = query(conn, f"SELECT * FROM {MON}.MON_QUERY_EFFICIENCY")
    assert [(r["queries"], r["partitions_scanned"], r["partitions_total"], r["full_scans"]) for r in q] == [(3, 110, 300, 1)]
    assert abs(q[0]["scanned_share"] - 110 / 300) < 1e-9
