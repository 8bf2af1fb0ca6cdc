"""badge-gateway fleet dashboard (Streamlit in Snowflake).

Six pages over the model's views only: every number comes from a MON_* / V_* / DT_* object in
BADGE_DB.ANALYTICS_LAYER; this file selects, sorts and draws, it computes nothing. Runs under
Snowflake's runtime (Snowpark session from get_active_session()) and locally on a fakesnow copy
of the model (see badge_data.py and `sql/streamlit/run_local.py`).
"""

from __future__ import annotations

import altair as alt
import streamlit as st

import badge_data as data

from streamlit_app_pages import PAGES

st.set_page_config(page_title="badge-gateway", layout="wide")


def v(view: str, order_by: str | None = None, where: str | None = None):
    return data.read_view(view, order_by=order_by, where=where)


def first(df, col, default=None):
    return df.iloc[0][col] if len(df) and col in df.columns else default


def overview() -> None:
    st.header("Overview")
    rate = v("MON_INGESTION_RATE", order_by="MINUTE_START")
    health = v("MON_GATEWAY_HEALTH", order_by="GATEWAY_ID")
    lat = v("MON_END_TO_END_LATENCY", order_by="HOUR_START DESC")
    graph = v("MON_TASK_GRAPH_STATE", order_by="TASK_NAME")
    stream = v("MON_STREAM_STATUS")
    dq = v("MON_DATA_QUALITY", order_by="METRIC")
    c = st.columns(4)
    c[0].metric("Rows landed (2 days)", int(rate["ROWS_INGESTED"].sum()) if len(rate) else 0)
    c[1].metric("Gateways reporting", int((~health["IS_SILENT"].astype(bool)).sum()) if len(health) else 0)
    c[2].metric("Gateways silent", int(health["IS_SILENT"].astype(bool).sum()) if len(health) else 0)
    c[3].metric("Swipe→fact p95 (ms, last hour)", first(lat, "SWIPE_TO_FACT_P95_MS", "—"))
    c = st.columns(3)
    c[0].metric("Task graph", first(graph, "GRAPH_STATE", "unknown"))
    c[1].metric("Stream lag (min)", first(stream, "LAG_MINUTES", "—"))
    c[2].metric("Stream stale", str(first(stream, "IS_STALE", "—")))
    alerts = dq[(dq["METRIC_VALUE"] > 0) & dq["METRIC"].isin(
        ["raw_malformed_rows", "staged_not_in_fact", "fact_orphan_user_keys", "fact_orphan_zone_keys",
         "tamper_events"])] if len(dq) else dq
    st.subheader("Data-quality alerts")
    st.dataframe(alerts, hide_index=True, use_container_width=True)


def gateways() -> None:
    st.header("Gateways")
    health = v("MON_GATEWAY_HEALTH", order_by="GATEWAY_ID")
    cols = ["GATEWAY_ID", "IS_SILENT", "LAST_HEARTBEAT_AT", "LAST_SWIPED_AT", "LAST_OFFSET_TOKEN", "SEQ_GAPS",
            "UNSYNCED_CLOCK_24H", "AGENT_VERSION", "BUFFER_DEPTH", "OLDEST_UNSENT_AGE_S", "READERS_DOWN",
            "EVENTS_24H", "ERROR_COUNT_24H"]
    st.dataframe(health[[c for c in cols if c in health.columns]], hide_index=True, use_container_width=True)
    if not len(health):
        return
    gw = st.selectbox("Drill down", list(health["GATEWAY_ID"]), key="gateway")
    quoted = "'" + str(gw).replace("'", "''") + "'"
    timeline = v("MON_INGESTION_RATE", order_by="MINUTE_START", where=f"GATEWAY_ID = {quoted}")
    st.subheader(f"{gw}: rows per minute")
    if len(timeline):
        st.altair_chart(alt.Chart(timeline).mark_bar().encode(x="MINUTE_START:T", y="ROWS_INGESTED:Q"),
                        use_container_width=True)
    beats = v("MON_GATEWAY_HEARTBEATS", order_by="SEQ", where=f"GATEWAY_ID = {quoted}")
    st.subheader(f"{gw}: heartbeats")
    if len(beats):
        st.altair_chart(alt.Chart(beats).mark_line(point=True).encode(x="INGESTED_AT:T", y="BUFFER_DEPTH:Q"),
                        use_container_width=True)
    st.dataframe(beats, hide_index=True, use_container_width=True)


def access() -> None:
    st.header("Access")
    occ = v("V_ZONE_OCCUPANCY", order_by="ZONE_ID, HOUR_START")
    hourly = v("DT_ZONE_HOURLY_OCCUPANCY", order_by="ZONE_ID, HOUR_START")
    st.subheader("Estimated occupancy by zone")
    if len(occ):
        st.altair_chart(alt.Chart(occ).mark_line(point=True).encode(
            x="HOUR_START:T", y="ESTIMATED_OCCUPANCY:Q", color="ZONE_ID:N"), use_container_width=True)
    st.subheader("Entries and exits per hour")
    if len(hourly):
        flows = hourly.melt(id_vars=["ZONE_ID", "HOUR_START"], value_vars=["ENTRIES", "EXITS"], var_name="FLOW",
                            value_name="COUNT")
        st.altair_chart(alt.Chart(flows).mark_bar().encode(x="HOUR_START:T", y="COUNT:Q", color="FLOW:N",
                                                           column="ZONE_ID:N"))
    st.subheader("Faults and unknown badges per zone and hour")
    st.dataframe(hourly[[c for c in ["ZONE_ID", "HOUR_START", "ACCESS_EVENTS", "FAULT_EVENTS",
                                      "UNKNOWN_BADGE_EVENTS"] if c in hourly.columns]],
                 hide_index=True, use_container_width=True)


def ingestion() -> None:
    st.header("Ingestion")
    rate = v("MON_INGESTION_RATE", order_by="MINUTE_START")
    lat = v("MON_END_TO_END_LATENCY", order_by="HOUR_START")
    st.subheader("Rows per minute")
    if len(rate):
        st.altair_chart(alt.Chart(rate).mark_bar().encode(x="MINUTE_START:T", y="ROWS_INGESTED:Q",
                                                          color="GATEWAY_ID:N"), use_container_width=True)
        st.subheader("Redelivered rows per minute")
        st.altair_chart(alt.Chart(rate).mark_bar().encode(x="MINUTE_START:T", y="REDELIVERED_ROWS:Q",
                                                          color="GATEWAY_ID:N"), use_container_width=True)
    st.subheader("Latency percentiles (ms)")
    if len(lat):
        pct = lat.melt(id_vars=["HOUR_START"], value_vars=["RAW_TO_FACT_P50_MS", "RAW_TO_FACT_P95_MS",
                                                           "SWIPE_TO_FACT_P50_MS", "SWIPE_TO_FACT_P95_MS"],
                       var_name="PERCENTILE", value_name="MS")
        st.altair_chart(alt.Chart(pct).mark_line(point=True).encode(x="HOUR_START:T", y="MS:Q", color="PERCENTILE:N"),
                        use_container_width=True)
    st.dataframe(v("MON_STREAM_STATUS"), hide_index=True, use_container_width=True)
    st.subheader("Raw → staging → fact reconciliation")
    st.dataframe(v("MON_RECONCILIATION", order_by="INGEST_DATE DESC, GATEWAY_ID"), hide_index=True,
                 use_container_width=True)


def data_quality() -> None:
    st.header("Data quality")
    dq = v("MON_DATA_QUALITY", order_by="METRIC")
    st.dataframe(dq, hide_index=True, use_container_width=True)
    st.subheader("SCD2 health")
    st.dataframe(v("MON_SCD2_HEALTH", order_by="DIMENSION"), hide_index=True, use_container_width=True)
    st.subheader("SCD2 problems (offending versions)")
    st.dataframe(v("MON_SCD2_ISSUES", order_by="DIMENSION, BUSINESS_KEY"), hide_index=True,
                 use_container_width=True)
    st.subheader("Reconciliation differences (offending gateway-days)")
    st.dataframe(v("MON_RECONCILIATION", order_by="INGEST_DATE DESC", where="NOT IS_RECONCILED"),
                 hide_index=True, use_container_width=True)


def cost_and_tasks() -> None:
    st.header("Cost and tasks")
    est = v("MON_STREAMING_COST_ESTIMATE", order_by="INGEST_DATE")
    st.subheader("Snowpipe Streaming cost estimate")
    st.dataframe(est, hide_index=True, use_container_width=True)
    st.subheader("Billed (ACCOUNT_USAGE)")
    st.dataframe(v("MON_STREAMING_COST_ACTUAL", order_by="USAGE_DATE"), hide_index=True, use_container_width=True)
    st.subheader("Task graph")
    st.dataframe(v("MON_TASK_GRAPH_STATE", order_by="TASK_NAME"), hide_index=True, use_container_width=True)
    runs = v("MON_TASK_HISTORY", order_by="SCHEDULED_TIME")
    if len(runs):
        st.altair_chart(alt.Chart(runs).mark_bar().encode(x="SCHEDULED_TIME:T", y="count():Q", color="STATE:N"),
                        use_container_width=True)
    st.subheader("Query pruning on the fact")
    st.dataframe(v("MON_QUERY_EFFICIENCY", order_by="QUERY_DATE"), hide_index=True, use_container_width=True)


RENDER = dict(zip(PAGES, [overview, gateways, access, ingestion, data_quality, cost_and_tasks]))

wanted = st.query_params.get("page", PAGES[0])
page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0)
if page != wanted:
    st.query_params["page"] = page
st.sidebar.caption(data.source_label())
RENDER[page]()
