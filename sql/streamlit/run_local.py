"""Run the dashboard locally on demo data, in one command (from the repository root):

    target/sql-venv/bin/python sql/streamlit/run_local.py            # agent demo -> model -> streamlit
    target/sql-venv/bin/python sql/streamlit/run_local.py --ledger L  # use an existing ledger NDJSON

It runs the agent's demo (`cargo run -p badge-agent --features demo -- demo --dir D`: simulated
readers -> real agent -> Snowpipe Streaming emulator, whose ledger D/ledger.ndjson holds every
committed row), deploys the SQL model into a local fakesnow database (target/dashboard-db),
loads the ledger through the pipe's own transformation, adds reference rows for the readers and
half of the badges, runs the task graph, and starts `streamlit run` on it.

Locally there is no Snowflake telemetry: the task-graph view is fed with the graph runs this
script made, the stream view with the stream's local position; cost actuals stay empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "tests"))

MON = "BADGE_DB.ANALYTICS_LAYER"
TASKS = ["TASK_BADGE_DEDUP", "TASK_BADGE_DIM_USERS", "TASK_BADGE_DIM_ZONES", "TASK_BADGE_FCT_ACCESS"]


def run_agent_demo(out_dir: Path, swipes: int) -> Path:
    """The agent's own demo; returns its ledger file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["cargo", "run", "-q", "-p", "badge-agent", "--features", "demo", "--", "demo", "--dir", str(out_dir),
           "--swipes", str(swipes)]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    ledger = out_dir / "ledger.ndjson"
    if not ledger.exists():
        raise SystemExit(f"the demo wrote no ledger at {ledger}")
    return ledger


def prepare(db_dir: Path, rows) -> dict:
    """Deploy the model into a fresh fakesnow database in db_dir and load rows (ledger lines or
    agent rows) through the pipe and the task graph. Returns a small summary."""
    import logging

    import fakesnow
    import snowflake.connector

    import badge_sql_harness as h

    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    shutil.rmtree(db_dir, ignore_errors=True)
    db_dir.mkdir(parents=True)
    rows = [json.loads(r) if isinstance(r, str) else r for r in rows if r]
    agent_rows = [r["row"] if "row" in r and "channel" in r else r for r in rows]
    with fakesnow.patch(db_path=str(db_dir)):
        conn = snowflake.connector.connect(database="BADGE_DB", schema="PUBLIC")
        h.deploy_model(conn)
        readers = sorted({r["reader_id"] for r in agent_rows if r.get("event_type") != "heartbeat"})
        for i, rid in enumerate(readers):
            h._exec(conn, "INSERT INTO BADGE_DB.STAGING_LAYER.REF_READERS (reader_id, door_id, door_name, zone_id, "
                          "zone_name, site_id, site_name, security_level, effective_from) "
                          "VALUES (%s, %s, %s, %s, %s, 'HQ', 'Head office', 1, '2020-01-01')",
                    (rid, f"door-{i + 1}", f"Door {i + 1}", f"zone-{i % 2 + 1}", f"Zone {i % 2 + 1}"))
        creds = sorted({r["credential"] for r in agent_rows if r.get("credential")})
        for i, cred in enumerate(creds[::2]):
            h._exec(conn, "INSERT INTO BADGE_DB.STAGING_LAYER.REF_BADGE_HOLDERS (credential, person_id, person_name, "
                          "department, status, effective_from) VALUES (%s, %s, %s, %s, 'active', '2020-01-01')",
                    (cred, f"P{i:04d}", f"Person {i}", ["R&D", "Ops", "Sales"][i % 3]))
        h.load_rows_through_pipe(conn, rows)
        run = h.run_dag(conn)
        for t in TASKS:
            h._exec(conn, f"INSERT INTO {MON}.MON_TASK_GRAPH_TASKS (task_name, task_state, predecessors) "
                          f"SELECT 'BADGE_DB.STAGING_LAYER.{t}', 'started', PARSE_JSON(%s)",
                    ("[]" if t == TASKS[0] else '["BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP"]',))
            h._exec(conn, f"INSERT INTO {MON}.MON_TASK_HISTORY (task_name, state, scheduled_time, completed_time) "
                          f"SELECT %s, %s, SYSDATE(), SYSDATE()",
                    (t, "SUCCEEDED" if f"BADGE_DB.STAGING_LAYER.{t}" in run.tasks_run else "SKIPPED"))
        h._exec(conn, f"INSERT INTO {MON}.MON_STREAM_OFFSET SELECT 'BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM', "
                      "SYSDATE(), FALSE")
        h._exec(conn, "CHECKPOINT")
        n = h.query(conn, f"SELECT COUNT(*) AS n FROM {MON}.FCT_ACCESS_EVENTS")[0]["n"]
        conn.close()
    return {"rows": len(rows), "facts": n, "graph": run.state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ledger", type=Path, help="ledger NDJSON to load instead of running the agent demo")
    ap.add_argument("--swipes", type=int, default=60, help="swipes per simulated reader in the agent demo")
    ap.add_argument("--db", type=Path, default=ROOT / "target" / "dashboard-db")
    ap.add_argument("--port", type=int, default=8501)
    ap.add_argument("--prepare-only", action="store_true", help="load the data, do not start streamlit")
    args = ap.parse_args()
    ledger = args.ledger or run_agent_demo(ROOT / "target" / "dashboard-demo", args.swipes)
    summary = prepare(args.db, ledger.read_text().splitlines())
    print(f"loaded {summary['rows']} ledger rows -> {summary['facts']} facts (graph run {summary['graph']})")
    if args.prepare_only:
        return
    env = dict(os.environ, BADGE_DASHBOARD_DB=str(args.db))
    os.execve(sys.executable, [sys.executable, "-m", "streamlit", "run", str(HERE / "streamlit_app.py"),
                               "--server.port", str(args.port), "--server.address", "127.0.0.1",
                               "--server.headless", "true", "--browser.gatherUsageStats", "false"], env)


if __name__ == "__main__":
    main()
