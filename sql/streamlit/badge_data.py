"""Where the dashboard's rows come from: Snowflake's Snowpark session inside Streamlit in
Snowflake, or a local fakesnow database file (BADGE_DASHBOARD_DB) with the model deployed and
demo data loaded. Only views of ANALYTICS_LAYER are read, whole or with a simple filter/order."""

from __future__ import annotations

import os
import re

import pandas as pd
import streamlit as st

SCHEMA = "BADGE_DB.ANALYTICS_LAYER"

#: Everything the dashboard may read. Views only: the logic lives in the SQL model.
VIEWS = frozenset({
    "MON_INGESTION_RATE", "MON_END_TO_END_LATENCY", "MON_TASK_HISTORY", "MON_TASK_GRAPH_STATE",
    "MON_STREAM_STATUS", "MON_RECONCILIATION", "MON_SCD2_HEALTH", "MON_SCD2_ISSUES", "MON_DATA_QUALITY",
    "MON_STREAMING_COST_ESTIMATE", "MON_STREAMING_COST_ACTUAL", "MON_QUERY_EFFICIENCY", "MON_GATEWAY_HEALTH",
    "MON_GATEWAY_HEARTBEATS", "V_ZONE_OCCUPANCY", "DT_ZONE_HOURLY_OCCUPANCY",
})

#: Views over account telemetry that have no local stand-in (see TELEMETRY_STUBS in the tests).
NEEDS_SNOWFLAKE = frozenset({"MON_STREAMING_COST_ACTUAL"})

_SAFE = re.compile(r"^[A-Za-z0-9_ ,.'=<>()\-:]*$")


@st.cache_resource
def _local_connection():
    """fakesnow on the DuckDB files in BADGE_DASHBOARD_DB (kept patched for the process)."""
    import fakesnow
    import snowflake.connector

    patch = fakesnow.patch(db_path=os.environ["BADGE_DASHBOARD_DB"])
    patch.__enter__()  # noqa: PLC2801 - the patch lives as long as the server process
    # Keep the patch referenced with the connection: a collected patch would close it.
    return patch, snowflake.connector.connect(database="BADGE_DB", schema="ANALYTICS_LAYER")


def _snowpark_session():
    try:
        from snowflake.snowpark.context import get_active_session
    except ImportError:
        return None
    try:
        return get_active_session()
    except Exception:  # noqa: BLE001 - no active session outside Snowflake
        return None


def source_label() -> str:
    if os.environ.get("BADGE_DASHBOARD_DB"):
        return f"local demo (fakesnow): {os.environ['BADGE_DASHBOARD_DB']}"
    return "Snowflake (Snowpark session)"


def read_view(view: str, order_by: str | None = None, where: str | None = None) -> pd.DataFrame:
    """SELECT * FROM one allowed view, optionally filtered/ordered; column names upper-case."""
    if view not in VIEWS:
        raise ValueError(f"{view} is not a dashboard view")
    for part in (order_by, where):
        if part is not None and not _SAFE.match(part):
            raise ValueError(f"unsafe clause: {part!r}")
    sql = f"SELECT * FROM {SCHEMA}.{view}"
    if where:
        sql += f" WHERE {where}"
    if order_by:
        sql += f" ORDER BY {order_by}"
    if os.environ.get("BADGE_DASHBOARD_DB"):
        if view in NEEDS_SNOWFLAKE:
            st.info(f"{view}: reads SNOWFLAKE.ACCOUNT_USAGE, not available in the local demo")
            return pd.DataFrame()
        cur = _local_connection()[1].cursor()
        cur.execute(sql)
        df = pd.DataFrame(cur.fetchall(), columns=[d[0].upper() for d in cur.description])
    else:
        session = _snowpark_session()
        if session is None:
            raise RuntimeError("no Snowpark session and BADGE_DASHBOARD_DB not set: run run_local.py for a local demo")
        df = session.sql(sql).to_pandas()
        df.columns = [c.upper() for c in df.columns]
    return df
