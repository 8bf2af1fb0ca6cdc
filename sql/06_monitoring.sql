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
    SELECT 'silent_gateway_minutes' AS setting_name, 30 AS setting_value,
           'a gateway with no swipe ingested for this long is reported silent' AS description
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

-- Rows landed per minute over the last two days, per gateway.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_INGESTION_RATE
    COMMENT = 'Raw rows ingested per minute and gateway (last 2 days), including redelivered duplicates'
AS
SELECT
    DATE_TRUNC('minute', r.ingested_at) AS minute_start,
    r.gateway_id,
    COUNT(*) AS rows_ingested,
    COUNT(DISTINCT r.event_id) AS distinct_events,
    COUNT(*) - COUNT(DISTINCT r.event_id) AS redelivered_rows
FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
WHERE r.ingested_at >= DATEADD('day', -2, SYSDATE())
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
        WHERE NOT EXISTS (SELECT 1 FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
                          WHERE f.event_id = e.event_id)),
       'staged swipes not (yet) in the fact'
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

-- Per-gateway health from the landing table: last swipe, last offset (seq), silence, error counts
-- over the last 24 hours, and sequence gaps (rows the agent numbered but that never landed).
-- A quiet door also looks silent: the agent sends no heartbeats, so read "silent" as "check it".
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.MON_GATEWAY_HEALTH
    COMMENT = 'Per gateway: last event, last offset, silence, 24 h error counts, sequence gaps'
AS
SELECT
    g.gateway_id,
    g.last_swiped_at,
    g.last_ingested_at,
    g.last_seq AS last_offset_token,
    g.last_agent_version,
    DATEDIFF('minute', g.last_ingested_at, SYSDATE()) AS minutes_since_last_event,
    DATEDIFF('minute', g.last_ingested_at, SYSDATE()) >= COALESCE(s.setting_value, 30) AS is_silent,
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
        MAX(r.swiped_at) AS last_swiped_at,
        MAX(r.ingested_at) AS last_ingested_at,
        MIN(r.seq) AS first_seq,
        MAX(r.seq) AS last_seq,
        MAX_BY(r.agent_version, r.seq) AS last_agent_version,
        COUNT(DISTINCT r.seq) AS distinct_seqs,
        COUNT_IF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())) AS events_24h,
        COUNT_IF(r.ingested_at >= DATEADD('hour', -24, SYSDATE()) AND r.event_type = 'reader_fault') AS reader_faults_24h,
        COUNT_IF(r.ingested_at >= DATEADD('hour', -24, SYSDATE()) AND r.event_type = 'tamper') AS tamper_events_24h,
        COUNT_IF(r.ingested_at >= DATEADD('hour', -24, SYSDATE()) AND NOT COALESCE(r.clock_synced, FALSE)) AS unsynced_clock_24h,
        COUNT_IF(r.ingested_at >= DATEADD('hour', -24, SYSDATE())
                 AND (r.event_id IS NULL OR r.seq IS NULL OR r.swiped_at IS NULL OR r.event_type IS NULL)) AS malformed_rows_24h
    FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS AS r
    WHERE r.gateway_id IS NOT NULL
    GROUP BY r.gateway_id
) AS g
LEFT JOIN BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS AS s
    ON s.setting_name = 'silent_gateway_minutes';

GRANT SELECT ON TABLE BADGE_DB.ANALYTICS_LAYER.MON_SETTINGS TO ROLE BADGE_READER_ROLE;
