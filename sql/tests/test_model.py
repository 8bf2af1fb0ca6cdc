"""Layer 2: the pipe mapping, dedup, SCD2 dimensions, fact, dynamic table and monitoring views,
executed on real rows under fakesnow with the unmodified task bodies (docs/sql-testing.md)."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest

import badge_sql_harness as h
from badge_sql_harness import agent_row, load_rows_through_pipe, query, run_dag

STG = "BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS"
RAW = "BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS"
DIM_USERS = "BADGE_DB.ANALYTICS_LAYER.DIM_USERS"
DIM_ZONES = "BADGE_DB.ANALYTICS_LAYER.DIM_ZONES"
FCT = "BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS"

ALICE = "H10301:12:1001"
BOB = "H10301:12:1002"


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


def holder(conn, credential: str, department: str, effective_from: str, *, person: str = "P-ALICE",
           status: str = "active") -> None:
    h._exec(
        conn,
        "INSERT INTO BADGE_DB.STAGING_LAYER.REF_BADGE_HOLDERS "
        "(credential, person_id, person_name, department, status, effective_from) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (credential, person, person.title(), department, status, effective_from),
    )


def reader(conn, reader_id: str, zone_id: str, effective_from: str, *, site: str = "HQ",
           level: int = 1) -> None:
    h._exec(
        conn,
        "INSERT INTO BADGE_DB.STAGING_LAYER.REF_READERS "
        "(reader_id, door_id, door_name, zone_id, zone_name, site_id, site_name, security_level, effective_from) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (reader_id, f"D-{reader_id}", f"Door {reader_id}", zone_id, f"Zone {zone_id}", site, site, level,
         effective_from),
    )


def facts(conn) -> dict[str, dict]:
    rows = query(
        conn,
        f"""SELECT f.event_id, f.user_sk, f.zone_sk, f.event_ts, f.event_ts_source, f.is_fault,
                   f.event_type, u.department, u.valid_from AS user_valid_from, z.zone_id AS dim_zone_id
            FROM {FCT} f
            JOIN {DIM_USERS} u ON u.user_sk = f.user_sk
            JOIN {DIM_ZONES} z ON z.zone_sk = f.zone_sk""",
    )
    return {r["event_id"]: r for r in rows}


def assert_scd2_invariants(conn, table: str, key: str, sk: str) -> None:
    """Exactly one current row per key; versions contiguous (no gaps, no overlaps)."""
    assert query(conn, f"SELECT {key} FROM {table} GROUP BY {key} HAVING COUNT_IF(is_current) <> 1") == []
    assert query(conn, f"SELECT {key}, valid_from FROM {table} GROUP BY 1, 2 HAVING COUNT(*) > 1") == []
    rows = query(conn, f"SELECT {key} AS k, valid_from, valid_to, is_current FROM {table} WHERE {sk} > 0 ORDER BY 1, 2")
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["k"], []).append(r)
    for k, versions in by_key.items():
        for prev, nxt in zip(versions, versions[1:]):
            assert prev["valid_to"] == nxt["valid_from"], f"gap/overlap for {k}: {prev} -> {nxt}"
            assert prev["is_current"] is False
        assert versions[-1]["valid_to"] is None and versions[-1]["is_current"] is True, k


# --------------------------------------------------------------------------- pipe


def test_pipe_maps_the_agent_row_to_typed_columns(conn) -> None:
    card = agent_row("gw-a", 7, "2025-03-01T08:00:00.123Z", credential="H10301:12:1001")
    card["card_number"] = 18446744073709551615  # u64 max survives as NUMBER(20,0)
    pin = agent_row("gw-a", 8, "2025-03-01T08:00:01.000Z", event_type="pin", detail="pin_length=4",
                    direction=None, zone_id=None, door_id=None)
    ndjson = "\n".join(json.dumps(r) for r in (card, pin)) + "\n"
    assert load_rows_through_pipe(conn, ndjson) == 2
    rows = {r["event_id"]: r for r in query(conn, f"SELECT * FROM {RAW}")}
    c = rows["gw-a:7"]
    assert c["gateway_id"] == "gw-a" and c["seq"] == 7 and c["reader_id"] == "R1"
    assert c["credential"] == "H10301:12:1001" and c["card_format"] == "H10301"
    assert c["facility_code"] == 12 and c["card_number"] == Decimal("18446744073709551615")
    assert c["raw_bits"] == "02468ace" and c["bit_count"] == 26
    assert c["swiped_at"] == ts("2025-03-01 08:00:00.123")
    assert c["clock_synced"] is True and c["agent_version"] == "0.1.0"
    assert json.loads(c["raw_payload"]) == card
    assert isinstance(c["ingested_at"], datetime)
    p = rows["gw-a:8"]
    # JSON null -> SQL NULL in typed columns; the field still exists in the raw payload.
    assert p["credential"] is None and p["zone_id"] is None and p["direction"] is None
    assert p["card_format"] is None and p["facility_code"] is None and p["card_number"] is None
    assert p["detail"] == "pin_length=4"
    assert json.loads(p["raw_payload"])["credential"] is None


# --------------------------------------------------------------------------- dedup


def test_duplicates_collapse_to_one_row_per_event_id(conn) -> None:
    e1 = agent_row("gw-a", 1, "2025-03-01T08:00:00.000Z", credential=ALICE)
    e2 = agent_row("gw-a", 2, "2025-03-01T08:01:00.000Z", credential=ALICE)
    load_rows_through_pipe(conn, [e1, e1, e2])  # redelivery inside one batch
    run = run_dag(conn)
    assert run.state == "SUCCEEDED"
    assert run.tasks_run == [
        "BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP",
        "BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_USERS",
        "BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_ZONES",
        "BADGE_DB.STAGING_LAYER.TASK_BADGE_FCT_ACCESS",
    ]
    assert run_dag(conn).state == "SKIPPED"  # stream consumed: nothing new
    load_rows_through_pipe(conn, [e1])  # redelivered in a later batch (e.g. after a crash-resume)
    assert run_dag(conn).state == "SUCCEEDED"
    assert query(conn, f"SELECT COUNT(*) AS n FROM {RAW}") == [{"n": 4}]
    assert query(conn, f"SELECT event_id FROM {STG} GROUP BY event_id HAVING COUNT(*) > 1") == []
    assert sorted(r["event_id"] for r in query(conn, f"SELECT event_id FROM {STG}")) == ["gw-a:1", "gw-a:2"]
    assert sorted(facts(conn)) == ["gw-a:1", "gw-a:2"]
    # First delivery wins: the staged row carries the earliest ingest time of gw-a:1.
    first = query(conn, f"SELECT MIN(ingested_at) AS t FROM {RAW} WHERE event_id = 'gw-a:1'")[0]["t"]
    assert query(conn, f"SELECT ingested_at FROM {STG} WHERE event_id = 'gw-a:1'") == [{"ingested_at": first}]
    dq = {r["metric"]: r["metric_value"] for r in query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_DATA_QUALITY")}
    assert dq["raw_duplicate_rows"] == 2


def test_event_id_falls_back_to_gateway_and_seq(conn) -> None:
    row = agent_row("gw-b", 5, "2025-03-01T08:00:00.000Z", credential=ALICE)
    row["event_id"] = None
    load_rows_through_pipe(conn, [row, row])
    run_dag(conn)
    assert [r["event_id"] for r in query(conn, f"SELECT event_id FROM {STG}")] == ["gw-b:5"]
    dq = {r["metric"]: r["metric_value"] for r in query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_DATA_QUALITY")}
    assert dq["raw_malformed_rows"] == 2


# --------------------------------------------------------------------------- SCD2


def test_department_changing_twice_gives_three_contiguous_versions(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    holder(conn, BOB, "Ops", "2025-01-01 00:00:00", person="P-BOB")
    load_rows_through_pipe(conn, [agent_row("gw-a", 1, "2025-01-02T09:00:00.000Z", credential=ALICE)])
    run_dag(conn)
    holder(conn, ALICE, "Sales", "2025-02-01 00:00:00")
    holder(conn, BOB, "Ops", "2025-02-01 00:00:00", person="P-BOB")  # snapshot reload, unchanged
    load_rows_through_pipe(conn, [agent_row("gw-a", 2, "2025-02-02T09:00:00.000Z", credential=ALICE)])
    run_dag(conn)
    first_close = query(conn, f"SELECT valid_to FROM {DIM_USERS} WHERE credential = %s AND department = 'R&D'", (ALICE,))
    holder(conn, ALICE, "Legal", "2025-03-01 00:00:00")
    load_rows_through_pipe(conn, [agent_row("gw-a", 3, "2025-03-02T09:00:00.000Z", credential=ALICE)])
    run_dag(conn)

    rows = query(
        conn,
        f"SELECT department, valid_from, valid_to, is_current FROM {DIM_USERS} WHERE credential = %s ORDER BY valid_from",
        (ALICE,),
    )
    assert rows == [
        {"department": "R&D", "valid_from": ts("2025-01-01"), "valid_to": ts("2025-02-01"), "is_current": False},
        {"department": "Sales", "valid_from": ts("2025-02-01"), "valid_to": ts("2025-03-01"), "is_current": False},
        {"department": "Legal", "valid_from": ts("2025-03-01"), "valid_to": None, "is_current": True},
    ]
    # The second change must not rewrite the first version's valid_to.
    assert first_close == [{"valid_to": ts("2025-02-01")}]
    assert query(conn, f"SELECT COUNT(*) AS n FROM {DIM_USERS} WHERE credential = %s", (BOB,)) == [{"n": 1}]
    assert_scd2_invariants(conn, DIM_USERS, "credential", "user_sk")
    f = facts(conn)
    assert [f[e]["department"] for e in ("gw-a:1", "gw-a:2", "gw-a:3")] == ["R&D", "Sales", "Legal"]


def test_several_changes_loaded_between_runs_each_become_a_version(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    holder(conn, ALICE, "R&D", "2025-01-15 00:00:00")  # identical consecutive row: no new version
    holder(conn, ALICE, "Sales", "2025-02-01 00:00:00")
    holder(conn, ALICE, "Legal", "2025-03-01 00:00:00")
    holder(conn, ALICE, "Legal", "2025-03-01 00:00:00", status="suspended")  # same instant, later load wins
    load_rows_through_pipe(conn, [agent_row("gw-a", 1, "2025-02-10T09:00:00.000Z", credential=ALICE)])
    run_dag(conn)
    rows = query(conn, f"SELECT department, status, valid_from, valid_to FROM {DIM_USERS} WHERE credential = %s ORDER BY valid_from", (ALICE,))
    assert [(r["department"], r["valid_from"], r["valid_to"]) for r in rows] == [
        ("R&D", ts("2025-01-01"), ts("2025-02-01")),
        ("Sales", ts("2025-02-01"), ts("2025-03-01")),
        ("Legal", ts("2025-03-01"), None),
    ]
    assert rows[-1]["status"] == "suspended"
    assert_scd2_invariants(conn, DIM_USERS, "credential", "user_sk")
    assert facts(conn)["gw-a:1"]["department"] == "Sales"


def test_reader_moving_zone_is_versioned_and_swipes_join_the_zone_valid_then(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [agent_row("gw-a", 1, "2025-01-10T09:00:00.000Z", credential=ALICE)])
    run_dag(conn)
    reader(conn, "R1", "LAB", "2025-02-01 00:00:00", level=3)
    load_rows_through_pipe(conn, [agent_row("gw-a", 2, "2025-02-10T09:00:00.000Z", credential=ALICE)])
    run_dag(conn)
    assert_scd2_invariants(conn, DIM_ZONES, "reader_id", "zone_sk")
    f = facts(conn)
    assert f["gw-a:1"]["dim_zone_id"] == "LOBBY"
    assert f["gw-a:2"]["dim_zone_id"] == "LAB"


# --------------------------------------------------------------------------- fact


def test_late_and_out_of_order_swipes_join_the_version_valid_at_swipe_time(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [agent_row("gw-a", 10, "2025-01-20T09:00:00.000Z", credential=ALICE)])
    run_dag(conn)
    holder(conn, ALICE, "Sales", "2025-02-01 00:00:00")
    # A batch arriving in reverse order, and a gateway that was offline since January (late swipes).
    load_rows_through_pipe(conn, [
        agent_row("gw-a", 12, "2025-02-05T09:00:00.000Z", credential=ALICE),
        agent_row("gw-a", 11, "2025-01-31T23:59:59.999Z", credential=ALICE),
        agent_row("gw-b", 1, "2025-01-15T09:00:00.000Z", credential=ALICE),
        agent_row("gw-b", 2, "2025-02-01T00:00:00.000Z", credential=ALICE),  # exactly at the boundary
    ])
    run_dag(conn)
    f = facts(conn)
    assert f["gw-a:10"]["department"] == "R&D"
    assert f["gw-a:11"]["department"] == "R&D"  # valid_to is exclusive
    assert f["gw-a:12"]["department"] == "Sales"
    assert f["gw-b:1"]["department"] == "R&D"
    assert f["gw-b:2"]["department"] == "Sales"  # valid_from is inclusive
    assert query(conn, f"SELECT event_id FROM {FCT} GROUP BY event_id HAVING COUNT(*) > 1") == []


def test_unknown_badges_and_readers_map_to_the_unknown_member_and_rekey_when_they_arrive(conn) -> None:
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [
        agent_row("gw-a", 1, "2025-01-10T09:00:00.000Z", credential=BOB),
        agent_row("gw-a", 2, "2025-01-10T09:05:00.000Z", credential=BOB, reader_id="R-NEW", zone_id="Z-CFG"),
    ])
    run_dag(conn)
    f = facts(conn)
    assert f["gw-a:1"]["user_sk"] == -1 and f["gw-a:1"]["zone_sk"] > 0
    assert f["gw-a:2"]["user_sk"] == -1 and f["gw-a:2"]["zone_sk"] == -1
    dq = {r["metric"]: r["metric_value"] for r in query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_DATA_QUALITY")}
    assert dq["unknown_badge_events"] == 2 and dq["unknown_reader_events"] == 1
    assert dq["fact_orphan_user_keys"] == 0 and dq["fact_orphan_zone_keys"] == 0

    # Bob's badge is registered effective before his swipes; the new reader only from February.
    holder(conn, BOB, "Ops", "2025-01-01 00:00:00", person="P-BOB")
    reader(conn, "R-NEW", "ROOF", "2025-02-01 00:00:00")
    load_rows_through_pipe(conn, [agent_row("gw-a", 3, "2025-02-10T09:00:00.000Z", credential=BOB, reader_id="R-NEW")])
    run_dag(conn)
    f = facts(conn)
    assert f["gw-a:1"]["department"] == "Ops" and f["gw-a:2"]["department"] == "Ops"  # re-keyed
    assert f["gw-a:2"]["zone_sk"] == -1  # the reader was not in the dimension at swipe time
    assert f["gw-a:3"]["dim_zone_id"] == "ROOF"
    updated = query(conn, f"SELECT COUNT(*) AS n FROM {FCT} WHERE updated_at > loaded_at")
    assert updated == [{"n": 2}]


def test_pin_and_reader_fault_events_are_kept_as_not_applicable_and_flagged(conn) -> None:
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [
        agent_row("gw-a", 1, "2025-01-10T09:00:00.000Z", event_type="pin", detail="pin_length=4"),
        agent_row("gw-a", 2, "2025-01-10T09:01:00.000Z", event_type="reader_fault", detail="parity error (26 bits)",
                  direction=None),
        agent_row("gw-a", 3, "2025-01-10T09:02:00.000Z", event_type="tamper", detail="case opened", direction=None),
    ])
    run_dag(conn)
    f = facts(conn)
    assert [f[e]["user_sk"] for e in ("gw-a:1", "gw-a:2", "gw-a:3")] == [-2, -2, -2]
    assert [f[e]["is_fault"] for e in ("gw-a:1", "gw-a:2", "gw-a:3")] == [False, True, True]
    assert all(f[e]["dim_zone_id"] == "LOBBY" for e in f)
    dq = {r["metric"]: r["metric_value"] for r in query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_DATA_QUALITY")}
    assert dq["reader_fault_events"] == 1 and dq["parity_fault_events"] == 1 and dq["tamper_events"] == 1
    assert dq["unknown_badge_events"] == 0
    health = query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_GATEWAY_HEALTH")
    assert health[0]["reader_faults_24h"] == 1 and health[0]["tamper_events_24h"] == 1
    assert health[0]["error_count_24h"] == 2


def test_unsynced_clock_swipes_keep_plausible_times_and_fall_back_to_ingest_time_otherwise(conn) -> None:
    holder(conn, ALICE, "R&D", "2020-01-01 00:00:00")
    load_rows_through_pipe(conn, [
        agent_row("gw-a", 1, "2025-01-10T09:00:00.000Z", credential=ALICE),
        agent_row("gw-a", 2, "2025-01-10T09:05:00.000Z", credential=ALICE, clock_synced=False),
        agent_row("gw-a", 3, "1970-01-01T00:00:42.000Z", credential=ALICE, clock_synced=False),
        agent_row("gw-a", 4, "2099-01-01T00:00:00.000Z", credential=ALICE, clock_synced=False),
    ])
    run_dag(conn)
    f = facts(conn)
    raw = {r["event_id"]: r for r in query(conn, f"SELECT event_id, ingested_at FROM {RAW}")}
    assert f["gw-a:1"]["event_ts_source"] == "AGENT_SYNCED"
    assert f["gw-a:2"]["event_ts_source"] == "AGENT_UNSYNCED"
    assert f["gw-a:2"]["event_ts"] == ts("2025-01-10 09:05:00")
    for e in ("gw-a:3", "gw-a:4"):
        assert f[e]["event_ts_source"] == "INGEST_FALLBACK"
        assert abs((f[e]["event_ts"] - raw[e]["ingested_at"]).total_seconds()) < 0.001
        assert f[e]["user_sk"] > 0  # joined at the fallback time, not 1970 or 2099
    swiped = query(conn, f"SELECT swiped_at FROM {FCT} WHERE event_id = 'gw-a:3'")
    assert swiped == [{"swiped_at": ts("1970-01-01 00:00:42")}]  # the reported time is kept
    dq = {r["metric"]: r["metric_value"] for r in query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_DATA_QUALITY")}
    assert dq["clock_unsynced_events"] == 3 and dq["ingest_time_fallback_events"] == 2


# --------------------------------------------------------------------------- dynamic table and monitoring


def test_hourly_zone_occupancy(conn) -> None:
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    reader(conn, "R2", "LAB", "2025-01-01 00:00:00")
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [
        agent_row("gw-a", 1, "2025-01-10T09:00:00.000Z", credential=ALICE, reader_id="R1", direction="in"),
        agent_row("gw-a", 2, "2025-01-10T09:10:00.000Z", credential=BOB, reader_id="R1", direction="in"),
        agent_row("gw-a", 3, "2025-01-10T09:50:00.000Z", credential=BOB, reader_id="R1", direction="out"),
        agent_row("gw-a", 4, "2025-01-10T10:15:00.000Z", credential=ALICE, reader_id="R2", direction="in"),
        agent_row("gw-a", 5, "2025-01-10T10:20:00.000Z", reader_id="R1", event_type="reader_fault",
                  detail="parity", direction=None),
        agent_row("gw-a", 6, "2025-01-10T10:30:00.000Z", credential=ALICE, reader_id="R9", zone_id="Z-CFG"),
    ])
    run_dag(conn)
    rows = query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.DT_ZONE_HOURLY_OCCUPANCY ORDER BY zone_id, hour_start")
    got = {(r["zone_id"], r["hour_start"]): r for r in rows}
    lobby9 = got[("LOBBY", ts("2025-01-10 09:00"))]
    assert (lobby9["access_events"], lobby9["entries"], lobby9["exits"], lobby9["net_flow"]) == (3, 2, 1, 1)
    assert lobby9["distinct_credentials"] == 2 and lobby9["unknown_badge_events"] == 2
    lobby10 = got[("LOBBY", ts("2025-01-10 10:00"))]
    assert lobby10["access_events"] == 0 and lobby10["fault_events"] == 1
    assert got[("LAB", ts("2025-01-10 10:00"))]["entries"] == 1
    assert got[("Z-CFG", ts("2025-01-10 10:00"))]["access_events"] == 1  # unknown reader: gateway's zone
    occ = query(conn, "SELECT zone_id, hour_start, estimated_occupancy FROM BADGE_DB.ANALYTICS_LAYER.V_ZONE_OCCUPANCY WHERE zone_id = 'LOBBY' ORDER BY hour_start")
    assert [r["estimated_occupancy"] for r in occ] == [1, 1]


def test_monitoring_views_over_local_tables(conn) -> None:
    load_rows_through_pipe(conn, [
        agent_row("gw-a", 1, "2025-01-10T09:00:00.000Z", credential=ALICE),
        agent_row("gw-a", 2, "2025-01-10T09:01:00.000Z", credential=ALICE),
        agent_row("gw-a", 5, "2025-01-10T09:02:00.000Z", credential=ALICE, agent_version="0.2.0"),
        agent_row("gw-b", 1, "2025-01-10T09:03:00.000Z", credential=BOB, clock_synced=False),
    ])
    run_dag(conn)
    health = {r["gateway_id"]: r for r in query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_GATEWAY_HEALTH")}
    assert health["gw-a"]["last_offset_token"] == 5 and health["gw-a"]["seq_gaps"] == 2
    assert health["gw-a"]["last_agent_version"] == "0.2.0"
    assert health["gw-a"]["is_silent"] is False and health["gw-a"]["events_24h"] == 3
    assert health["gw-b"]["unsynced_clock_24h"] == 1 and health["gw-b"]["seq_gaps"] == 0
    rate = query(conn, "SELECT gateway_id, SUM(rows_ingested) AS n FROM BADGE_DB.ANALYTICS_LAYER.MON_INGESTION_RATE GROUP BY 1 ORDER BY 1")
    assert [(r["gateway_id"], r["n"]) for r in rate] == [("gw-a", 3), ("gw-b", 1)]
    lat = query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_END_TO_END_LATENCY")
    assert lat[0]["events"] == 4 and lat[0]["clock_synced_events"] == 3
    assert lat[0]["raw_to_fact_p50_ms"] >= 0
    cost = query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_STREAMING_COST_ESTIMATE")
    assert cost[0]["rows_ingested"] == 4 and cost[0]["payload_bytes"] > 4 * 200
    assert cost[0]["estimated_credits"] is None  # no rate configured by default
    h._exec(conn, "UPDATE BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS SET setting_value = 2 WHERE setting_name = 'streaming_credits_per_gb'")
    cost = query(conn, "SELECT * FROM BADGE_DB.ANALYTICS_LAYER.MON_STREAMING_COST_ESTIMATE")
    assert abs(cost[0]["estimated_credits"] - cost[0]["payload_bytes"] / 1e9 * 2) < 1e-12


def test_deployment_records_what_only_a_real_account_can_run(conn) -> None:
    dep = h.deployment(conn)
    skipped = " ".join(head for _f, head in dep.skipped)
    for kind in ("CREATE WAREHOUSE", "CREATE ROLE", "CREATE USER", "GRANT", "ALTER TASK", "SELECT SYSTEM$",
                 "MON_TASK_HISTORY", "MON_TASK_FAILURES", "MON_STREAMING_COST_ACTUAL", "MON_PIPE_USAGE"):
        assert kind in skipped, kind
    assert dep.dynamic_tables == ["BADGE_DB.ANALYTICS_LAYER.DT_ZONE_HOURLY_OCCUPANCY"]
    assert list(dep.streams) == ["BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM"]
    print(f"\n{len(dep.executed)} statements executed, {len(dep.skipped)} skipped (need a real account):")
    for f, head in dep.skipped:
        print(f"  skipped {f}: {head[:70]}")


def test_pipe_loader_accepts_emulator_ledger_lines(conn) -> None:
    row = agent_row("gw-l", 1, "2025-01-10T09:00:00.000Z", credential=ALICE)
    ledger_line = {"pipe": "BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_PIPE", "channel": "gw-l",
                   "offset_token": "1", "start_offset_token": None, "row_index": 0,
                   "committed_at_ms": 1736499600000, "row": row}
    assert load_rows_through_pipe(conn, (json.dumps(ledger_line) + "\n").encode()) == 1
    assert load_rows_through_pipe(conn, "") == 0
    got = query(conn, f"SELECT event_id, raw_payload FROM {RAW}")
    assert [r["event_id"] for r in got] == ["gw-l:1"]
    assert json.loads(got[0]["raw_payload"]) == row


def test_fake_snowflake_deploys_the_model_from_scratch() -> None:
    """The entry point a full-pipeline test uses: fresh fakesnow, full deploy, pipe, one DAG pass."""
    with h.fake_snowflake() as c:
        assert load_rows_through_pipe(c, [agent_row("gw-f", 1, "2025-01-10T09:00:00.000Z", credential=ALICE)]) == 1
        assert run_dag(c).state == "SUCCEEDED"
        assert [r["event_id"] for r in query(c, f"SELECT event_id FROM {FCT}")] == ["gw-f:1"]
        assert run_dag(c).state == "SKIPPED"


def test_task_merges_are_deterministic_under_native_merge(conn, monkeypatch) -> None:
    """fakesnow silently accepts a MERGE that hits one target row twice; Snowflake raises. Hand the
    task MERGEs to DuckDB's native MERGE (which raises like Snowflake, docs/sql-testing.md) and run a
    scenario with duplicates, several SCD2 changes per batch and re-keying."""
    import fakesnow.cursor

    monkeypatch.setattr(fakesnow.cursor.transforms, "merge", lambda e: [e])
    # The switch is active: a MERGE with two source rows for one target row now fails.
    h._exec(conn, "CREATE TABLE BADGE_DB.TEST_HARNESS.T_ND (k INT, v INT)")
    h._exec(conn, "INSERT INTO BADGE_DB.TEST_HARNESS.T_ND VALUES (1, 0)")
    with pytest.raises(Exception):
        h._exec(conn, "MERGE INTO BADGE_DB.TEST_HARNESS.T_ND AS t USING (SELECT 1 AS k, 1 AS v UNION ALL "
                      "SELECT 1, 2) AS s ON t.k = s.k WHEN MATCHED THEN UPDATE SET v = s.v")
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    e1 = agent_row("gw-a", 1, "2025-01-10T09:00:00.000Z", credential=ALICE)
    load_rows_through_pipe(conn, [e1, e1, agent_row("gw-a", 2, "2025-01-10T09:00:00.000Z", credential=BOB)])
    assert run_dag(conn).state == "SUCCEEDED"
    holder(conn, ALICE, "Sales", "2025-02-01 00:00:00")
    holder(conn, ALICE, "Legal", "2025-03-01 00:00:00")
    holder(conn, BOB, "Ops", "2025-01-01 00:00:00", person="P-BOB")
    reader(conn, "R1", "LAB", "2025-02-15 00:00:00")
    load_rows_through_pipe(conn, [e1, agent_row("gw-a", 3, "2025-02-20T09:00:00.000Z", credential=ALICE)])
    assert run_dag(conn).state == "SUCCEEDED"
    assert_scd2_invariants(conn, DIM_USERS, "credential", "user_sk")
    assert_scd2_invariants(conn, DIM_ZONES, "reader_id", "zone_sk")
    f = facts(conn)
    assert (f["gw-a:1"]["department"], f["gw-a:2"]["department"], f["gw-a:3"]["department"]) == ("R&D", "Ops", "Sales")
    assert f["gw-a:3"]["dim_zone_id"] == "LAB"
