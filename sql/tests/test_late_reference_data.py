"""Point-in-time correctness of the SCD2 dimensions and the fact under late, early and repeated
reference loads: back-dated versions, future-dated versions, the same (key, effective_from) loaded
again; every case checks the exact versions and which facts were re-keyed (and that no others were)."""

from __future__ import annotations

from datetime import datetime

from badge_sql_harness import agent_row, load_rows_through_pipe, query, run_dag
from test_model import ALICE, BOB, DIM_USERS, DIM_ZONES, FCT, assert_scd2_invariants, facts, holder, reader


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


def versions(conn, credential: str) -> list[tuple]:
    rows = query(
        conn,
        f"SELECT department, status, valid_from, valid_to, is_current FROM {DIM_USERS} "
        "WHERE credential = %s ORDER BY valid_from",
        (credential,),
    )
    return [(r["department"], r["status"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows]


def departments(conn) -> dict[str, str]:
    return {e: r["department"] for e, r in facts(conn).items()}


def rekeyed(conn) -> list[str]:
    """Facts whose keys were rewritten after their first load."""
    rows = query(conn, f"SELECT event_id FROM {FCT} WHERE updated_at > loaded_at ORDER BY event_id")
    return [r["event_id"] for r in rows]


def swipe(gw: str, seq: int, at: str, cred: str = ALICE, **kw) -> dict:
    return agent_row(gw, seq, at, credential=cred, **kw)


def trigger(conn, seq: int) -> None:
    """Reference changes are applied by the next graph run, which new swipes trigger."""
    load_rows_through_pipe(conn, [swipe("gw-t", seq, "2025-06-01T00:00:00.000Z", BOB)])
    assert run_dag(conn).state == "SUCCEEDED"


def test_backdated_version_between_two_versions_is_inserted_and_rekeys_only_its_interval(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    holder(conn, ALICE, "Sales", "2025-03-01 00:00:00")
    holder(conn, BOB, "Ops", "2025-01-01 00:00:00", person="P-BOB")
    load_rows_through_pipe(conn, [
        swipe("gw-a", 1, "2025-01-10T09:00:00.000Z"),
        swipe("gw-a", 2, "2025-02-10T09:00:00.000Z"),
        swipe("gw-a", 3, "2025-02-20T09:00:00.000Z"),
        swipe("gw-a", 4, "2025-03-10T09:00:00.000Z"),
        swipe("gw-a", 5, "2025-02-20T09:00:00.000Z", BOB),
    ])
    run_dag(conn)
    assert departments(conn) == {"gw-a:1": "R&D", "gw-a:2": "R&D", "gw-a:3": "R&D", "gw-a:4": "Sales",
                                 "gw-a:5": "Ops"}

    holder(conn, ALICE, "Legal", "2025-02-15 00:00:00")  # entered late, effective mid-February
    trigger(conn, 1)
    assert versions(conn, ALICE) == [
        ("R&D", "active", ts("2025-01-01"), ts("2025-02-15"), False),
        ("Legal", "active", ts("2025-02-15"), ts("2025-03-01"), False),
        ("Sales", "active", ts("2025-03-01"), None, True),
    ]
    assert_scd2_invariants(conn, DIM_USERS, "credential", "user_sk")
    d = departments(conn)
    assert [d[e] for e in ("gw-a:1", "gw-a:2", "gw-a:3", "gw-a:4", "gw-a:5")] == ["R&D", "R&D", "Legal", "Sales", "Ops"]
    assert rekeyed(conn) == ["gw-a:3"]  # only Alice's swipe inside [Feb 15, Mar 1)


def test_backdated_version_before_the_first_one_rekeys_unknown_facts(conn) -> None:
    holder(conn, ALICE, "Sales", "2025-03-01 00:00:00")
    load_rows_through_pipe(conn, [swipe("gw-a", 1, "2025-02-10T09:00:00.000Z"),
                                  swipe("gw-a", 2, "2025-03-10T09:00:00.000Z")])
    run_dag(conn)
    assert facts(conn)["gw-a:1"]["user_sk"] == -1
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    trigger(conn, 1)
    assert versions(conn, ALICE) == [
        ("R&D", "active", ts("2025-01-01"), ts("2025-03-01"), False),
        ("Sales", "active", ts("2025-03-01"), None, True),
    ]
    assert departments(conn)["gw-a:1"] == "R&D" and departments(conn)["gw-a:2"] == "Sales"
    assert rekeyed(conn) == ["gw-a:1"]


def test_backdated_row_equal_to_the_next_version_moves_its_start(conn) -> None:
    """Loading Sales from Feb 15 when Sales already starts Mar 1: one Sales version from Feb 15 (the
    Mar 1 one is folded into it), and every fact of the old Sales version moves to the new one."""
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    holder(conn, ALICE, "Sales", "2025-03-01 00:00:00")
    load_rows_through_pipe(conn, [swipe("gw-a", 1, "2025-02-20T09:00:00.000Z"),
                                  swipe("gw-a", 2, "2025-03-10T09:00:00.000Z")])
    run_dag(conn)
    holder(conn, ALICE, "Sales", "2025-02-15 00:00:00")
    trigger(conn, 1)
    assert versions(conn, ALICE) == [
        ("R&D", "active", ts("2025-01-01"), ts("2025-02-15"), False),
        ("Sales", "active", ts("2025-02-15"), None, True),
    ]
    f = facts(conn)
    assert f["gw-a:1"]["department"] == "Sales" and f["gw-a:2"]["department"] == "Sales"
    assert f["gw-a:1"]["user_valid_from"] == ts("2025-02-15") == f["gw-a:2"]["user_valid_from"]
    assert query(conn, f"SELECT COUNT(*) AS n FROM {FCT} f WHERE NOT EXISTS "
                       f"(SELECT 1 FROM {DIM_USERS} u WHERE u.user_sk = f.user_sk)") == [{"n": 0}]


def test_future_dated_version_waits_for_its_date_and_a_later_loaded_change_is_kept(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [swipe("gw-a", 1, "2025-02-10T09:00:00.000Z")])
    run_dag(conn)
    holder(conn, ALICE, "Legal", "2099-01-01 00:00:00")  # a move entered far ahead
    trigger(conn, 1)
    assert versions(conn, ALICE) == [
        ("R&D", "active", ts("2025-01-01"), ts("2099-01-01"), True),  # still current today
        ("Legal", "active", ts("2099-01-01"), None, False),
    ]
    holder(conn, ALICE, "Sales", "2025-03-01 00:00:00")  # effective already, loaded after the move
    load_rows_through_pipe(conn, [swipe("gw-a", 2, "2025-03-10T09:00:00.000Z")])
    run_dag(conn)
    assert versions(conn, ALICE) == [
        ("R&D", "active", ts("2025-01-01"), ts("2025-03-01"), False),
        ("Sales", "active", ts("2025-03-01"), ts("2099-01-01"), True),
        ("Legal", "active", ts("2099-01-01"), None, False),
    ]
    assert query(conn, f"SELECT credential FROM {DIM_USERS} GROUP BY 1 HAVING COUNT_IF(is_current) > 1") == []
    d = departments(conn)
    assert d["gw-a:1"] == "R&D" and d["gw-a:2"] == "Sales"


def test_same_key_and_effective_from_loaded_again_after_the_run_corrects_in_place(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    holder(conn, ALICE, "Salse", "2025-03-01 00:00:00")  # typo
    load_rows_through_pipe(conn, [swipe("gw-a", 1, "2025-02-10T09:00:00.000Z"),
                                  swipe("gw-a", 2, "2025-03-10T09:00:00.000Z")])
    run_dag(conn)
    sk_before = facts(conn)["gw-a:2"]["user_sk"]
    holder(conn, ALICE, "Sales", "2025-03-01 00:00:00")  # the fix: same key, same effective_from
    trigger(conn, 1)
    assert versions(conn, ALICE) == [
        ("R&D", "active", ts("2025-01-01"), ts("2025-03-01"), False),
        ("Sales", "active", ts("2025-03-01"), None, True),
    ]
    f = facts(conn)
    assert f["gw-a:2"]["department"] == "Sales" and f["gw-a:2"]["user_sk"] == sk_before
    assert f["gw-a:1"]["department"] == "R&D"


def test_same_key_and_effective_from_loaded_twice_before_the_run_later_load_wins(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00", status="active")
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00", status="suspended")
    load_rows_through_pipe(conn, [swipe("gw-a", 1, "2025-02-10T09:00:00.000Z")])
    run_dag(conn)
    assert versions(conn, ALICE) == [("R&D", "suspended", ts("2025-01-01"), None, True)]


def test_same_date_correction_equal_to_the_previous_version_folds_them_and_rekeys(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    holder(conn, ALICE, "Sales", "2025-03-01 00:00:00")  # loaded by mistake
    load_rows_through_pipe(conn, [swipe("gw-a", 1, "2025-02-10T09:00:00.000Z"),
                                  swipe("gw-a", 2, "2025-03-10T09:00:00.000Z")])
    run_dag(conn)
    holder(conn, ALICE, "R&D", "2025-03-01 00:00:00")  # corrected: no change on Mar 1 after all
    trigger(conn, 1)
    assert versions(conn, ALICE) == [("R&D", "active", ts("2025-01-01"), None, True)]
    f = facts(conn)
    assert f["gw-a:1"]["user_sk"] == f["gw-a:2"]["user_sk"] and f["gw-a:2"]["department"] == "R&D"
    assert rekeyed(conn) == ["gw-a:2"]


def test_backdated_reader_move_rekeys_zone_keys_of_that_reader_only(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    reader(conn, "R2", "LAB", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [
        swipe("gw-a", 1, "2025-01-10T09:00:00.000Z", reader_id="R1"),
        swipe("gw-a", 2, "2025-02-10T09:00:00.000Z", reader_id="R1"),
        swipe("gw-a", 3, "2025-02-10T09:00:00.000Z", reader_id="R2"),
    ])
    run_dag(conn)
    reader(conn, "R1", "ROOF", "2025-02-01 00:00:00")
    trigger(conn, 1)
    rows = query(conn, f"SELECT zone_id, valid_from, valid_to, is_current FROM {DIM_ZONES} "
                       "WHERE reader_id = 'R1' ORDER BY valid_from")
    assert [(r["zone_id"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows] == [
        ("LOBBY", ts("2025-01-01"), ts("2025-02-01"), False),
        ("ROOF", ts("2025-02-01"), None, True),
    ]
    f = facts(conn)
    assert [f[e]["dim_zone_id"] for e in ("gw-a:1", "gw-a:2", "gw-a:3")] == ["LOBBY", "ROOF", "LAB"]
    assert rekeyed(conn) == ["gw-a:2"]
    assert_scd2_invariants(conn, DIM_ZONES, "reader_id", "zone_sk")


def test_a_run_without_reference_changes_rewrites_nothing(conn) -> None:
    holder(conn, ALICE, "R&D", "2025-01-01 00:00:00")
    reader(conn, "R1", "LOBBY", "2025-01-01 00:00:00")
    load_rows_through_pipe(conn, [swipe("gw-a", 1, "2025-01-10T09:00:00.000Z")])
    run_dag(conn)
    before = query(conn, f"SELECT user_sk, updated_at FROM {DIM_USERS} ORDER BY user_sk")
    trigger(conn, 1)
    trigger(conn, 2)
    assert query(conn, f"SELECT user_sk, updated_at FROM {DIM_USERS} ORDER BY user_sk") == before
    assert rekeyed(conn) == []
