-- badge-gateway: monitoring views. Views over the project's own tables run locally under the test
-- harness; views over INFORMATION_SCHEMA table functions and SNOWFLAKE.ACCOUNT_USAGE are parse-checked
-- only (they need a real account; ACCOUNT_USAGE lags by up to 45 minutes to 3 hours).
-- Readers of the ACCOUNT_USAGE views need IMPORTED PRIVILEGES on the SNOWFLAKE database (or the
-- SNOWFLAKE.USAGE_VIEWER database role).

USE ROLE SYSADMIN;
USE DATABASE BADGE_DB;
USE SCHEMA ANALYTICS_LAYER;

-- Tunable thresholds and prices, one row each; update in place.
CREATE TABLE IF NOT EXISTS BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS (
    setting_name    VARCHAR NOT NULL,
    setting_value   FLOAT,
    description     VARCHAR,
    CONSTRAINT PK_MON_SETTINGS PRIMARY KEY (setting_name)
)
    COMMENT = 'Thresholds and prices used by the monitoring views';

MERGE INTO BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS AS t
USING (
    SELECT 'silent_gateway_minutes' AS setting_name, 15 AS setting_value,
           'a gateway with no row at all (swipe or heartbeat) ingested for this long is reported silent' AS description
    UNION ALL
    SELECT 'stream_stale_after_days', 14,
           'days after its offset an unconsumed stream goes stale: the larger of the table''s DATA_RETENTION_TIME_IN_DAYS and MAX_DATA_EXTENSION_TIME_IN_DAYS (default 14)'
    UNION ALL
    SELECT 'reconciliation_days', 14,
           'days of ingest that MON_RECONCILIATION compares across raw, staging and fact'
    UNION ALL
    SELECT 'streaming_credits_per_gb', NULL,
           'Snowpipe Streaming (high-performance) credits per uncompressed GB: set from the Snowflake Service Consumption Table'
    UNION ALL
    SELECT 'credit_price_usd', NULL,
           'contracted price of one credit, for the USD estimate'
) AS s
ON t.setting_name = s.setting_name
WHEN NOT MATCHED THEN
    INSERT (setting_name, setting_value, description)
    VALUES (s.setting_name, s.setting_value, s.description);

-- Rows landed per minute over the last two days, per gateway. A row is a redelivery when its
-- event_id landed before (at any earlier time, e.g. minutes earlier before a crash-resume), which
-- is exactly what MON_DATA_QUALITY.raw_duplicate_rows counts: over the same rows the two agree.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_INGESTION_RATE
    COMMENT = 'Raw rows ingested per minute and gateway (last 2 days): first deliveries, redeliveries, heartbeats'
AS
SELECT
    DATE_TRUNC('minute', c.ingested_at) AS minute_start,
    c.gateway_id,
    COUNT(*) AS rows_ingested,
    COUNT_IF(c.copy_no = 1) AS first_deliveries,
    COUNT_IF(c.copy_no > 1) AS redelivered_rows,
    COUNT_IF(c.event_type = 'heartbeat') AS heartbeat_rows
FROM (
    SELECT
        r.gateway_id, r.event_type, r.ingested_at,
        IFF(r.event_id IS NULL, 1,
            ROW_NUMBER() OVER (PARTITION BY r.event_id ORDER BY r.ingested_at, r.seq)) AS copy_no
    FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
    WHERE r.ingested_at >= DATEADD('day', -2, SYSDATE())
       OR r.event_id IN (SELECT x.event_id FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS x
                         WHERE x.ingested_at >= DATEADD('day', -2, SYSDATE()))
) AS c
WHERE c.ingested_at >= DATEADD('day', -2, SYSDATE())
GROUP BY 1, 2;

-- Latency per hour of swipe: swipe -> raw (only swipes stamped by a synchronised clock are
-- meaningful), raw -> fact, and swipe -> fact. Milliseconds.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_END_TO_END_LATENCY
    COMMENT = 'Swipe -> raw -> fact latency percentiles per hour (clock-synced swipes only for swipe-based legs)'
AS
SELECT
    DATE_TRUNC('hour', f.event_ts) AS hour_start,
    COUNT(*) AS events,
    COUNT_IF(f.clock_synced) AS clock_synced_events,
    MEDIAN(IFF(f.clock_synced, DATEDIFF('millisecond', f.swiped_at, f.ingested_at), NULL)) AS swipe_to_raw_p50_ms,
    PERCENTILE_CONT(0.95) WITHIN GROUP (
        ORDER BY IFF(f.clock_synced, DATEDIFF('millisecond', f.swiped_at, f.ingested_at), NULL)) AS swipe_to_raw_p95_ms,
    MEDIAN(DATEDIFF('millisecond', f.ingested_at, f.loaded_at)) AS raw_to_fact_p50_ms,
    PERCENTILE_CONT(0.95) WITHIN GROUP (
        ORDER BY DATEDIFF('millisecond', f.ingested_at, f.loaded_at)) AS raw_to_fact_p95_ms,
    MEDIAN(IFF(f.clock_synced, DATEDIFF('millisecond', f.swiped_at, f.loaded_at), NULL)) AS swipe_to_fact_p50_ms,
    PERCENTILE_CONT(0.95) WITHIN GROUP (
        ORDER BY IFF(f.clock_synced, DATEDIFF('millisecond', f.swiped_at, f.loaded_at), NULL)) AS swipe_to_fact_p95_ms,
    MAX(IFF(f.clock_synced, DATEDIFF('millisecond', f.swiped_at, f.loaded_at), NULL)) AS swipe_to_fact_max_ms
FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
GROUP BY 1;

-- Task runs of the graph over the last 24 hours (INFORMATION_SCHEMA: no latency, 7 days max).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_TASK_HISTORY
    COMMENT = 'Recent runs of the badge task graph (INFORMATION_SCHEMA.TASK_HISTORY, last 24 h)'
AS
SELECT
    th.name AS task_name,
    th.state,
    th.scheduled_time,
    th.query_start_time,
    th.completed_time,
    DATEDIFF('millisecond', th.query_start_time, th.completed_time) AS duration_ms,
    th.error_code,
    th.error_message,
    th.attempt_number,
    th.graph_run_group_id,
    th.query_id
FROM TABLE(BADGE_DB.INFORMATION_SCHEMA.TASK_HISTORY(
    SCHEDULED_TIME_RANGE_START => DATEADD('hour', -24, CURRENT_TIMESTAMP()),
    RESULT_LIMIT => 10000)) AS th
WHERE th.database_name = 'BADGE_DB'
  AND th.schema_name = 'STAGING_LAYER'
  AND th.name LIKE 'TASK_BADGE_%';

-- Failed runs over the last 7 days (ACCOUNT_USAGE, up to 45 minutes behind).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_TASK_FAILURES
    COMMENT = 'Failed runs of the badge task graph, last 7 days (ACCOUNT_USAGE.TASK_HISTORY)'
AS
SELECT
    th.name AS task_name,
    th.scheduled_time,
    th.completed_time,
    th.error_code,
    th.error_message,
    th.attempt_number,
    th.query_id
FROM SNOWFLAKE.ACCOUNT_USAGE.TASK_HISTORY AS th
WHERE th.database_name = 'BADGE_DB'
  AND th.schema_name = 'STAGING_LAYER'
  AND th.state = 'FAILED'
  AND th.scheduled_time >= DATEADD('day', -7, CURRENT_TIMESTAMP());

-- Data quality in metric/value form, over everything landed so far.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_DATA_QUALITY
    COMMENT = 'Data-quality counters: duplicates, malformed rows, orphans, unknown members, faults, unsynced clocks'
AS
SELECT 'raw_duplicate_rows' AS metric,
       (SELECT COUNT(*) - COUNT(DISTINCT r.event_id)
        FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r WHERE r.event_id IS NOT NULL) AS metric_value,
       'raw rows whose event_id was already delivered (collapsed by the dedup task)' AS description
UNION ALL
SELECT 'raw_malformed_rows',
       (SELECT COUNT(*) FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
        WHERE r.event_id IS NULL OR r.gateway_id IS NULL OR r.seq IS NULL OR r.swiped_at IS NULL
           OR r.reader_id IS NULL OR r.event_type IS NULL),
       'raw rows missing a required field of the agent row'
UNION ALL
SELECT 'staged_not_in_fact',
       (SELECT COUNT(*) FROM BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS AS e
        WHERE COALESCE(e.event_type, '') <> 'heartbeat'
          AND NOT EXISTS (SELECT 1 FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
                          WHERE f.event_id = e.event_id)),
       'staged swipes not (yet) in the fact (heartbeats never go there)'
UNION ALL
SELECT 'fact_orphan_user_keys',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
        WHERE NOT EXISTS (SELECT 1 FROM BADGE_DB.ANALYTICS_LAYER.DIM_USERS AS u
                          WHERE u.user_sk = f.user_sk)),
       'fact rows whose user_sk is in no DIM_USERS row (must be 0)'
UNION ALL
SELECT 'fact_orphan_zone_keys',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
        WHERE NOT EXISTS (SELECT 1 FROM BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS z
                          WHERE z.zone_sk = f.zone_sk)),
       'fact rows whose zone_sk is in no DIM_ZONES row (must be 0)'
UNION ALL
SELECT 'unknown_badge_events',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f WHERE f.user_sk = -1),
       'swipes with a credential that no DIM_USERS version covers at swipe time'
UNION ALL
SELECT 'unknown_reader_events',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f WHERE f.zone_sk = -1),
       'swipes from a reader that no DIM_ZONES version covers at swipe time'
UNION ALL
SELECT 'reader_fault_events',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
        WHERE f.event_type = 'reader_fault'),
       'reader_fault events (parity errors, framing errors, bad frames)'
UNION ALL
SELECT 'parity_fault_events',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
        WHERE f.event_type = 'reader_fault' AND LOWER(f.detail) LIKE '%parity%'),
       'reader_fault events whose detail mentions parity'
UNION ALL
SELECT 'tamper_events',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
        WHERE f.event_type = 'tamper'),
       'tamper events'
UNION ALL
SELECT 'clock_unsynced_events',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
        WHERE NOT COALESCE(f.clock_synced, FALSE)),
       'swipes stamped while the gateway clock was not NTP-synchronised'
UNION ALL
SELECT 'ingest_time_fallback_events',
       (SELECT COUNT(*) FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
        WHERE f.event_ts_source = 'INGEST_FALLBACK'),
       'swipes whose unsynced timestamp was implausible and replaced by the ingest time';

-- Snowpipe Streaming cost estimate from what landed: bytes of the JSON rows (an upper bound:
-- Snowflake bills the values only, not the keys) times the configured credits per GB.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_STREAMING_COST_ESTIMATE
    COMMENT = 'Estimated Snowpipe Streaming volume and credits per day (set MON_SETTINGS streaming_credits_per_gb)'
AS
SELECT
    d.ingest_date,
    d.rows_ingested,
    d.payload_bytes,
    d.payload_bytes / 1e9 AS payload_gb,
    d.payload_bytes / 1e9 * rate.setting_value AS estimated_credits,
    d.payload_bytes / 1e9 * rate.setting_value * price.setting_value AS estimated_cost_usd
FROM (
    SELECT
        TO_DATE(r.ingested_at) AS ingest_date,
        COUNT(*) AS rows_ingested,
        SUM(LENGTH(TO_JSON(r.raw_payload))) AS payload_bytes
    FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
    GROUP BY 1
) AS d
LEFT JOIN BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS AS rate
    ON rate.setting_name = 'streaming_credits_per_gb'
LEFT JOIN BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS AS price
    ON price.setting_name = 'credit_price_usd';

-- What Snowflake actually billed for Snowpipe Streaming (ACCOUNT_USAGE, up to 3 hours behind).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_STREAMING_COST_ACTUAL
    COMMENT = 'Billed Snowpipe Streaming credits per day (ACCOUNT_USAGE.METERING_HISTORY) and bytes for the badge pipe'
AS
SELECT
    TO_DATE(m.start_time) AS usage_date,
    m.service_type,
    SUM(m.credits_used) AS credits_used
FROM SNOWFLAKE.ACCOUNT_USAGE.METERING_HISTORY AS m
WHERE m.service_type IN ('SNOWPIPE_STREAMING', 'PIPE')
  AND m.start_time >= DATEADD('day', -30, CURRENT_TIMESTAMP())
GROUP BY 1, 2;

CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_PIPE_USAGE
    COMMENT = 'Credits and bytes billed for RAW_BADGE_EVENTS_PIPE per day (ACCOUNT_USAGE.PIPE_USAGE_HISTORY)'
AS
SELECT
    TO_DATE(p.start_time) AS usage_date,
    SUM(p.credits_used) AS credits_used,
    SUM(p.bytes_inserted) AS bytes_inserted,
    SUM(p.bytes_billed) AS bytes_billed
FROM SNOWFLAKE.ACCOUNT_USAGE.PIPE_USAGE_HISTORY AS p
WHERE p.pipe_name = 'RAW_BADGE_EVENTS_PIPE'
  AND p.start_time >= DATEADD('day', -30, CURRENT_TIMESTAMP())
GROUP BY 1;

-- Agent heartbeats (event_type = 'heartbeat', one every few minutes per gateway, see the agent's
-- [heartbeat] config): the agent's own view of its health, carried as JSON in `detail`.
-- Staged (deduplicated) like swipes, never loaded into the fact or the access counts.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_GATEWAY_HEARTBEATS
    COMMENT = 'Agent heartbeats: buffer depth, oldest unsent age, clock sync, reader states, agent version'
AS
SELECT
    e.gateway_id,
    e.seq,
    e.event_id,
    e.swiped_at AS sent_at,
    e.ingested_at,
    e.clock_synced,
    e.agent_version,
    TRY_PARSE_JSON(e.detail):buffer_depth::NUMBER(20, 0) AS buffer_depth,
    TRY_PARSE_JSON(e.detail):oldest_unsent_age_s::NUMBER(20, 0) AS oldest_unsent_age_s,
    TRY_PARSE_JSON(e.detail):skipped_heartbeats::NUMBER(20, 0) AS skipped_heartbeats,
    TRY_PARSE_JSON(e.detail):readers AS reader_states,
    TRY_PARSE_JSON(e.detail):readers_down::NUMBER(10, 0) AS readers_down
FROM BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS AS e
WHERE e.event_type = 'heartbeat';

-- Per-gateway health. Counts are of distinct events (event_id; a redelivered row counts once),
-- heartbeats excluded. last_swiped_at uses only clock stamps the model trusts (event_ts_source =
-- AGENT_SYNCED: not unsynced, not implausible). "Silent" = no row at all, swipe or heartbeat, for
-- silent_gateway_minutes: with heartbeats every few minutes a quiet door is not silent, a dead
-- gateway is. Buffer depth, oldest unsent age, clock sync, reader states and the agent version
-- come from the gateway's latest heartbeat.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_GATEWAY_HEALTH
    COMMENT = 'Per gateway: last heartbeat and its state, last trusted swipe, last offset, silence, 24 h distinct-event counts, sequence gaps'
AS
SELECT
    g.gateway_id,
    st.last_swiped_at,
    g.last_ingested_at,
    hb.ingested_at AS last_heartbeat_at,
    g.last_seq AS last_offset_token,
    COALESCE(hb.agent_version, g.last_agent_version) AS agent_version,
    hb.buffer_depth,
    hb.oldest_unsent_age_s,
    hb.clock_synced AS heartbeat_clock_synced,
    hb.readers_down,
    hb.reader_states,
    hb.skipped_heartbeats,
    DATEDIFF('minute', g.last_ingested_at, SYSDATE()) AS minutes_since_last_row,
    DATEDIFF('minute', g.last_ingested_at, SYSDATE()) >= COALESCE(s.setting_value, 15) AS is_silent,
    g.heartbeats_24h,
    g.events_24h,
    g.reader_faults_24h,
    g.tamper_events_24h,
    g.unsynced_clock_24h,
    g.malformed_rows_24h,
    g.reader_faults_24h + g.tamper_events_24h + g.malformed_rows_24h AS error_count_24h,
    g.distinct_seqs,
    g.last_seq - g.first_seq + 1 - g.distinct_seqs AS seq_gaps
FROM (
    SELECT
        r.gateway_id,
        MAX(r.ingested_at) AS last_ingested_at,
        MIN(r.seq) AS first_seq,
        MAX(r.seq) AS last_seq,
        MAX_BY(r.agent_version, r.seq) AS last_agent_version,
        COUNT(DISTINCT r.seq) AS distinct_seqs,
        COUNT(DISTINCT IFF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())
                           AND r.event_type = 'heartbeat', r.event_id, NULL)) AS heartbeats_24h,
        COUNT(DISTINCT IFF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())
                           AND COALESCE(r.event_type, '') <> 'heartbeat', r.event_id, NULL)) AS events_24h,
        COUNT(DISTINCT IFF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())
                           AND r.event_type = 'reader_fault', r.event_id, NULL)) AS reader_faults_24h,
        COUNT(DISTINCT IFF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())
                           AND r.event_type = 'tamper', r.event_id, NULL)) AS tamper_events_24h,
        COUNT(DISTINCT IFF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())
                           AND COALESCE(r.event_type, '') <> 'heartbeat'
                           AND NOT COALESCE(r.clock_synced, FALSE), r.event_id, NULL)) AS unsynced_clock_24h,
        COUNT_IF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())
                 AND (r.event_id IS NULL OR r.seq IS NULL OR r.swiped_at IS NULL OR r.event_type IS NULL)) AS malformed_rows_24h
    FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
    WHERE r.gateway_id IS NOT NULL
    GROUP BY r.gateway_id
) AS g
LEFT JOIN (
    SELECT t.gateway_id, MAX(t.swiped_at) AS last_swiped_at
    FROM BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS AS t
    WHERE t.event_ts_source = 'AGENT_SYNCED' AND COALESCE(t.event_type, '') <> 'heartbeat'
    GROUP BY t.gateway_id
) AS st
    ON st.gateway_id = g.gateway_id
LEFT JOIN (
    SELECT b.*
    FROM BADGE_DB.ANALYTICS_LAYER.MON_GATEWAY_HEARTBEATS AS b
    QUALIFY ROW_NUMBER() OVER (PARTITION BY b.gateway_id ORDER BY b.seq DESC) = 1
) AS hb
    ON hb.gateway_id = g.gateway_id
LEFT JOIN BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS AS s
    ON s.setting_name = 'silent_gateway_minutes';

-- Stream offset and pending data, straight from Snowflake (parse-checked only: SYSTEM$ functions
-- need a real account). SYSTEM$STREAM_GET_TABLE_TIMESTAMP returns the offset in nanoseconds since
-- the epoch (UTC).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_STREAM_OFFSET
    COMMENT = 'Offset timestamp and has-data flag of RAW_BADGE_EVENTS_STREAM (SYSTEM$ functions)'
AS
SELECT
    'BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM' AS stream_name,
    TO_TIMESTAMP_NTZ(
        TO_NUMBER(SYSTEM$STREAM_GET_TABLE_TIMESTAMP('BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM')), 9) AS offset_ts,
    SYSTEM$STREAM_HAS_DATA('BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM') AS has_data;

-- Stream lag and staleness. The stream goes stale stream_stale_after_days after its offset if it
-- is not consumed (then the graph can never catch up without a reload), so is_stale / stale_soon
-- are the alarms; lag is how far the offset trails now while data waits; backlog is what landed in
-- the raw table but is not staged yet (the same thing seen from the data).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_STREAM_STATUS
    COMMENT = 'RAW_BADGE_EVENTS_STREAM: offset, lag, stale-after time, stale flags, unstaged backlog'
AS
SELECT
    o.stream_name,
    o.offset_ts,
    o.has_data,
    IFF(o.has_data, DATEDIFF('minute', o.offset_ts, SYSDATE()), 0) AS lag_minutes,
    DATEADD('day', COALESCE(d.setting_value, 14), o.offset_ts) AS stale_after,
    o.has_data AND SYSDATE() >= DATEADD('day', COALESCE(d.setting_value, 14), o.offset_ts) AS is_stale,
    o.has_data AND SYSDATE() >= DATEADD('day', COALESCE(d.setting_value, 14) - 1, o.offset_ts) AS stale_soon,
    b.backlog_rows,
    b.oldest_backlog_ingested_at,
    DATEDIFF('minute', b.oldest_backlog_ingested_at, SYSDATE()) AS backlog_minutes
FROM BADGE_DB.ANALYTICS_LAYER.MON_STREAM_OFFSET AS o
CROSS JOIN (
    SELECT COUNT(*) AS backlog_rows, MIN(r.ingested_at) AS oldest_backlog_ingested_at
    FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
    WHERE COALESCE(r.event_id, r.gateway_id || ':' || TO_VARCHAR(r.seq)) IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS AS e
          WHERE e.event_id = COALESCE(r.event_id, r.gateway_id || ':' || TO_VARCHAR(r.seq)))
) AS b
LEFT JOIN BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS AS d
    ON d.setting_name = 'stream_stale_after_days';

-- The graph's tasks and their state (started / suspended), from INFORMATION_SCHEMA (parse-checked only).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_TASK_GRAPH_TASKS
    COMMENT = 'Tasks of the badge graph with their state (INFORMATION_SCHEMA.TASK_DEPENDENTS)'
AS
SELECT
    td.database_name || '.' || td.schema_name || '.' || td.name AS task_name,
    td.state AS task_state,
    td.schedule,
    td.predecessors,
    td.last_suspended_on
FROM TABLE(BADGE_DB.INFORMATION_SCHEMA.TASK_DEPENDENTS(
    TASK_NAME => 'BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP', RECURSIVE => TRUE)) AS td;

-- Task-graph state: a suspended root stops everything without a single failed run, so the state
-- comes from the tasks themselves, not only from their runs. graph_state (same on every row):
-- AUTO_SUSPENDED (root suspended and its last run failed: SUSPEND_TASK_AFTER_NUM_FAILURES hit),
-- SUSPENDED, FAILING (some task's last run failed), RUNNING.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_TASK_GRAPH_STATE
    COMMENT = 'Per task: state, last run, 24 h failures; graph_state RUNNING / FAILING / SUSPENDED / AUTO_SUSPENDED'
AS
WITH last_run AS (
    SELECT h.task_name, h.state AS last_run_state, h.completed_time AS last_run_completed,
           h.error_message AS last_error_message
    FROM BADGE_DB.ANALYTICS_LAYER.MON_TASK_HISTORY AS h
    WHERE h.state IN ('SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELLED', 'FAILED_AND_AUTO_RETRIED')
    QUALIFY ROW_NUMBER() OVER (PARTITION BY h.task_name ORDER BY h.scheduled_time DESC) = 1
),
failures AS (
    SELECT h.task_name, COUNT(*) AS failed_runs_24h
    FROM BADGE_DB.ANALYTICS_LAYER.MON_TASK_HISTORY AS h
    WHERE h.state = 'FAILED'
    GROUP BY h.task_name
),
per_task AS (
    SELECT
        t.task_name,
        t.predecessors IS NULL OR ARRAY_SIZE(t.predecessors) = 0 AS is_root,
        LOWER(t.task_state) AS task_state,
        t.last_suspended_on,
        l.last_run_state,
        l.last_run_completed,
        l.last_error_message,
        COALESCE(f.failed_runs_24h, 0) AS failed_runs_24h
    FROM BADGE_DB.ANALYTICS_LAYER.MON_TASK_GRAPH_TASKS AS t
    LEFT JOIN last_run AS l ON SPLIT_PART(l.task_name, '.', -1) = SPLIT_PART(t.task_name, '.', -1)
    LEFT JOIN failures AS f ON SPLIT_PART(f.task_name, '.', -1) = SPLIT_PART(t.task_name, '.', -1)
)
SELECT
    p.*,
    CASE
        WHEN MAX(IFF(p.is_root AND p.task_state = 'suspended' AND p.last_run_state = 'FAILED', 1, 0)) OVER () = 1
            THEN 'AUTO_SUSPENDED'
        WHEN MAX(IFF(p.is_root AND p.task_state = 'suspended', 1, 0)) OVER () = 1 THEN 'SUSPENDED'
        WHEN MAX(IFF(p.last_run_state = 'FAILED', 1, 0)) OVER () = 1 THEN 'FAILING'
        ELSE 'RUNNING'
    END AS graph_state
FROM per_task AS p;

-- Raw -> staging -> fact reconciliation per gateway and ingest day (the day the first copy of an
-- event landed, which staging and fact keep). For every day the counts must agree:
-- raw_events = staged_events (dedup lost nothing) and staged_swipes = fact_events (the fact lost
-- nothing; heartbeats are staged but never in the fact). A recent day may trail by one graph run.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_RECONCILIATION
    COMMENT = 'Per gateway and ingest day: raw rows/events vs staged vs fact; differences must be 0'
AS
WITH raw_events AS (
    SELECT
        COALESCE(r.event_id, r.gateway_id || ':' || TO_VARCHAR(r.seq)) AS event_key,
        MIN(r.gateway_id) AS gateway_id,
        TO_DATE(MIN(r.ingested_at)) AS ingest_date,
        COUNT(*) AS copies,
        MAX(IFF(r.event_type = 'heartbeat', 1, 0)) AS is_heartbeat
    FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
    WHERE r.ingested_at >= DATEADD('day', -(SELECT COALESCE(MAX(c.setting_value), 14)
                                           FROM BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS AS c
                                           WHERE c.setting_name = 'reconciliation_days'), SYSDATE())
      AND COALESCE(r.event_id, r.gateway_id || ':' || TO_VARCHAR(r.seq)) IS NOT NULL
    GROUP BY 1
),
raw_day AS (
    SELECT gateway_id, ingest_date, SUM(copies) AS raw_rows, COUNT(*) AS raw_events
    FROM raw_events GROUP BY 1, 2
),
stg_day AS (
    SELECT e.gateway_id, TO_DATE(e.ingested_at) AS ingest_date, COUNT(*) AS staged_events,
           COUNT_IF(COALESCE(e.event_type, '') <> 'heartbeat') AS staged_swipes,
           COUNT_IF(e.event_type = 'heartbeat') AS staged_heartbeats
    FROM BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS AS e
    WHERE e.event_id IN (SELECT x.event_key FROM raw_events AS x)
    GROUP BY 1, 2
),
fct_day AS (
    SELECT f.gateway_id, TO_DATE(f.ingested_at) AS ingest_date, COUNT(*) AS fact_events
    FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
    WHERE f.event_id IN (SELECT x.event_key FROM raw_events AS x)
    GROUP BY 1, 2
)
SELECT
    r.gateway_id,
    r.ingest_date,
    r.raw_rows,
    r.raw_events,
    COALESCE(s.staged_events, 0) AS staged_events,
    COALESCE(s.staged_heartbeats, 0) AS staged_heartbeats,
    COALESCE(s.staged_swipes, 0) AS staged_swipes,
    COALESCE(f.fact_events, 0) AS fact_events,
    r.raw_events - COALESCE(s.staged_events, 0) AS raw_not_staged,
    COALESCE(s.staged_swipes, 0) - COALESCE(f.fact_events, 0) AS staged_not_in_fact,
    r.raw_events = COALESCE(s.staged_events, 0)
        AND COALESCE(s.staged_swipes, 0) = COALESCE(f.fact_events, 0) AS is_reconciled
FROM raw_day AS r
LEFT JOIN stg_day AS s ON s.gateway_id = r.gateway_id AND s.ingest_date = r.ingest_date
LEFT JOIN fct_day AS f ON f.gateway_id = r.gateway_id AND f.ingest_date = r.ingest_date;

-- SCD2 health: one row per problem. MULTIPLE_CURRENT (more than one current version of a key),
-- OVERLAP (a version starts before the previous one ends), GAP (a version starts after the
-- previous one ended), OPEN_NOT_LAST (a version with no end that is not the key's last).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_SCD2_ISSUES
    COMMENT = 'SCD2 problems in DIM_USERS / DIM_ZONES: several current rows, gaps, overlaps (must be empty)'
AS
WITH versions AS (
    SELECT 'DIM_USERS' AS dimension, u.credential AS business_key, u.user_sk AS surrogate_key,
           u.valid_from, u.valid_to, u.is_current
    FROM BADGE_DB.ANALYTICS_LAYER.DIM_USERS AS u WHERE u.user_sk > 0
    UNION ALL
    SELECT 'DIM_ZONES', z.reader_id, z.zone_sk, z.valid_from, z.valid_to, z.is_current
    FROM BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS z WHERE z.zone_sk > 0
),
chained AS (
    SELECT
        v.*,
        LAG(v.valid_to) OVER (PARTITION BY v.dimension, v.business_key ORDER BY v.valid_from, v.surrogate_key) AS prev_valid_to,
        LAG(v.surrogate_key) OVER (PARTITION BY v.dimension, v.business_key ORDER BY v.valid_from, v.surrogate_key) AS prev_surrogate_key,
        ROW_NUMBER() OVER (PARTITION BY v.dimension, v.business_key ORDER BY v.valid_from DESC, v.surrogate_key DESC) AS rank_from_last,
        COUNT_IF(v.is_current) OVER (PARTITION BY v.dimension, v.business_key) AS current_rows
    FROM versions AS v
)
SELECT c.dimension, c.business_key, 'MULTIPLE_CURRENT' AS issue, c.surrogate_key, c.valid_from, c.valid_to
FROM chained AS c WHERE c.current_rows > 1 AND c.is_current
UNION ALL
SELECT c.dimension, c.business_key, 'OVERLAP', c.surrogate_key, c.valid_from, c.valid_to
FROM chained AS c
WHERE c.prev_surrogate_key IS NOT NULL AND (c.prev_valid_to IS NULL OR c.valid_from < c.prev_valid_to)
UNION ALL
SELECT c.dimension, c.business_key, 'GAP', c.surrogate_key, c.valid_from, c.valid_to
FROM chained AS c
WHERE c.prev_valid_to IS NOT NULL AND c.valid_from > c.prev_valid_to
UNION ALL
SELECT c.dimension, c.business_key, 'OPEN_NOT_LAST', c.surrogate_key, c.valid_from, c.valid_to
FROM chained AS c
WHERE c.valid_to IS NULL AND c.rank_from_last > 1;

CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_SCD2_HEALTH
    COMMENT = 'Per dimension: keys, versions, and the count of each SCD2 problem (all must be 0)'
AS
SELECT
    k.dimension,
    k.business_keys,
    k.versions,
    COUNT(DISTINCT IFF(i.issue = 'MULTIPLE_CURRENT', i.business_key, NULL)) AS keys_with_multiple_current,
    COUNT_IF(i.issue = 'OVERLAP') AS overlaps,
    COUNT_IF(i.issue = 'GAP') AS gaps,
    COUNT_IF(i.issue = 'OPEN_NOT_LAST') AS open_not_last
FROM (
    SELECT 'DIM_USERS' AS dimension, COUNT(DISTINCT u.credential) AS business_keys, COUNT(*) AS versions
    FROM BADGE_DB.ANALYTICS_LAYER.DIM_USERS AS u WHERE u.user_sk > 0
    UNION ALL
    SELECT 'DIM_ZONES', COUNT(DISTINCT z.reader_id), COUNT(*)
    FROM BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS z WHERE z.zone_sk > 0
) AS k
LEFT JOIN BADGE_DB.ANALYTICS_LAYER.MON_SCD2_ISSUES AS i
    ON i.dimension = k.dimension
GROUP BY k.dimension, k.business_keys, k.versions;

-- Queries that read the fact, from ACCOUNT_USAGE (up to 45 minutes behind; parse-checked only).
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_FACT_QUERIES
    COMMENT = 'Queries on FCT_ACCESS_EVENTS, last 7 days (ACCOUNT_USAGE.QUERY_HISTORY)'
AS
SELECT
    q.query_id,
    q.start_time,
    q.warehouse_name,
    q.query_type,
    q.partitions_scanned,
    q.partitions_total,
    q.bytes_scanned,
    q.total_elapsed_time AS total_elapsed_ms
FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY AS q
WHERE q.start_time >= DATEADD('day', -7, CURRENT_TIMESTAMP())
  AND q.database_name = 'BADGE_DB'
  AND q.query_text ILIKE '%FCT_ACCESS_EVENTS%'
  AND q.execution_status = 'SUCCESS';

-- Pruning on the fact per day and query type: partitions scanned vs total. A scanned share near
-- 1 for filtered queries means the clustering key (event_date, zone_sk) is not helping them.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_QUERY_EFFICIENCY
    COMMENT = 'Fact queries per day and type: partitions scanned vs total, scanned share, bytes, time'
AS
SELECT
    TO_DATE(q.start_time) AS query_date,
    q.query_type,
    COUNT(*) AS queries,
    SUM(q.partitions_scanned) AS partitions_scanned,
    SUM(q.partitions_total) AS partitions_total,
    SUM(q.partitions_scanned) / NULLIF(SUM(q.partitions_total), 0) AS scanned_share,
    COUNT_IF(q.partitions_total > 0 AND q.partitions_scanned = q.partitions_total) AS full_scans,
    SUM(q.bytes_scanned) AS bytes_scanned,
    MEDIAN(q.total_elapsed_ms) AS median_elapsed_ms
FROM BADGE_DB.ANALYTICS_LAYER.MON_FACT_QUERIES AS q
GROUP BY 1, 2;

GRANT SELECT ON TABLE BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS TO ROLE BADGE_READER_ROLE;
