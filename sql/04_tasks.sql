-- badge-gateway: the task graph. Every task body is ONE DML statement after the first top-level AS,
-- so the local test harness can extract and run it unmodified. Only the root reads the stream.
--
--   TASK_BADGE_DEDUP (root, every minute, only when the stream has data)
--     ├── TASK_BADGE_DIM_USERS   (SCD2 from REF_BADGE_HOLDERS)
--     └── TASK_BADGE_DIM_ZONES   (SCD2 from REF_READERS)
--           └── TASK_BADGE_FCT_ACCESS (AFTER both dimensions)

USE ROLE SYSADMIN;
USE DATABASE BADGE_DB;
USE SCHEMA STAGING_LAYER;

-- CREATE OR REPLACE on a graph requires the root to be suspended.
ALTER TASK IF EXISTS BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP SUSPEND;

-- Root: consume the stream, keep the first delivery of every event_id, resolve the business time.
-- An unsynchronised gateway clock (no RTC on a Pi) is trusted only if plausible: not before 2020 and
-- not more than 5 minutes after Snowflake received the row; otherwise the ingest time is used.
CREATE OR REPLACE TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP
    WAREHOUSE = BADGE_WH
    SCHEDULE = '1 MINUTE'
    ALLOW_OVERLAPPING_EXECUTION = FALSE
    SUSPEND_TASK_AFTER_NUM_FAILURES = 10
    TASK_AUTO_RETRY_ATTEMPTS = 2
    COMMENT = 'Root: dedup new raw swipes (stream) into STG_BADGE_EVENTS on event_id'
    WHEN SYSTEM$STREAM_HAS_DATA('BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM')
AS
MERGE INTO BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS AS t
USING (
    SELECT
        k.dedup_key AS event_id, k.gateway_id, k.seq, k.reader_id, k.zone_id, k.door_id,
        k.direction, k.event_type, k.credential, k.card_format, k.facility_code, k.card_number,
        k.raw_bits, k.bit_count, k.detail, k.swiped_at, k.clock_synced,
        CASE
            WHEN k.swiped_at IS NULL THEN k.ingested_at
            WHEN COALESCE(k.clock_synced, FALSE) THEN k.swiped_at
            WHEN k.swiped_at < TO_TIMESTAMP_NTZ('2020-01-01 00:00:00')
              OR k.swiped_at > DATEADD('minute', 5, k.ingested_at) THEN k.ingested_at
            ELSE k.swiped_at
        END AS event_ts,
        CASE
            WHEN k.swiped_at IS NULL THEN 'INGEST_FALLBACK'
            WHEN COALESCE(k.clock_synced, FALSE) THEN 'AGENT_SYNCED'
            WHEN k.swiped_at < TO_TIMESTAMP_NTZ('2020-01-01 00:00:00')
              OR k.swiped_at > DATEADD('minute', 5, k.ingested_at) THEN 'INGEST_FALLBACK'
            ELSE 'AGENT_UNSYNCED'
        END AS event_ts_source,
        COALESCE(k.event_type IN ('reader_fault', 'tamper'), FALSE) AS is_fault,
        k.agent_version, k.raw_payload, k.ingested_at,
        SYSDATE() AS staged_at
    FROM (
        SELECT
            COALESCE(r.event_id, r.gateway_id || ':' || TO_VARCHAR(r.seq)) AS dedup_key,
            r.gateway_id, r.seq, r.reader_id, r.zone_id, r.door_id, r.direction, r.event_type,
            r.credential, r.card_format, r.facility_code, r.card_number, r.raw_bits, r.bit_count,
            r.detail, r.swiped_at, r.clock_synced, r.agent_version, r.raw_payload, r.ingested_at
        FROM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM AS r
        WHERE r.METADATA$ACTION = 'INSERT'
    ) AS k
    WHERE k.dedup_key IS NOT NULL
    QUALIFY ROW_NUMBER() OVER (PARTITION BY k.dedup_key ORDER BY k.ingested_at, k.seq) = 1
) AS s
ON t.event_id = s.event_id
WHEN NOT MATCHED THEN
    INSERT (event_id, gateway_id, seq, reader_id, zone_id, door_id, direction, event_type,
            credential, card_format, facility_code, card_number, raw_bits, bit_count, detail,
            swiped_at, clock_synced, event_ts, event_ts_source, is_fault, agent_version,
            raw_payload, ingested_at, staged_at)
    VALUES (s.event_id, s.gateway_id, s.seq, s.reader_id, s.zone_id, s.door_id, s.direction,
            s.event_type, s.credential, s.card_format, s.facility_code, s.card_number, s.raw_bits,
            s.bit_count, s.detail, s.swiped_at, s.clock_synced, s.event_ts, s.event_ts_source,
            s.is_fault, s.agent_version, s.raw_payload, s.ingested_at, s.staged_at);

-- SCD2 for badge holders. Applies every reference row newer than the current version, in
-- effective_from order, so several changes loaded between two runs each become a version.
-- Consecutive rows with identical attributes collapse into one version. Each new version's
-- valid_to is the next version's valid_from (no gaps, no overlaps); the previously current row is
-- closed at the first new version's valid_from. Rows not newer than the current version are
-- ignored (back-dated corrections need a manual fix).
CREATE OR REPLACE TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_USERS
    WAREHOUSE = BADGE_WH
    COMMENT = 'SCD2 DIM_USERS from REF_BADGE_HOLDERS'
    AFTER BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP
AS
MERGE INTO BADGE_DB.ANALYTICS_LAYER.DIM_USERS AS d
USING (
    WITH cur AS (
        SELECT c.credential, c.attr_hash, c.valid_from
        FROM BADGE_DB.ANALYTICS_LAYER.DIM_USERS AS c
        WHERE c.is_current = TRUE AND c.user_sk > 0
    ),
    src AS (
        SELECT
            h.credential, h.person_id, h.person_name, h.department, h.status, h.effective_from,
            MD5(CONCAT_WS('|', COALESCE(h.person_id, ''), COALESCE(h.person_name, ''),
                          COALESCE(h.department, ''), COALESCE(h.status, ''))) AS attr_hash
        FROM BADGE_DB.STAGING_LAYER.REF_BADGE_HOLDERS AS h
        QUALIFY ROW_NUMBER() OVER (
            PARTITION BY h.credential, h.effective_from ORDER BY h.loaded_at DESC) = 1
    ),
    cand AS (
        SELECT
            s.credential, s.person_id, s.person_name, s.department, s.status, s.effective_from,
            s.attr_hash, cur.attr_hash AS cur_hash, (cur.credential IS NOT NULL) AS has_current,
            LAG(s.attr_hash) OVER (PARTITION BY s.credential ORDER BY s.effective_from) AS prev_hash
        FROM src AS s
        LEFT JOIN cur ON cur.credential = s.credential
        WHERE cur.credential IS NULL OR s.effective_from > cur.valid_from
    ),
    changes AS (
        SELECT
            c.credential, c.person_id, c.person_name, c.department, c.status, c.effective_from,
            c.attr_hash, c.has_current
        FROM cand AS c
        WHERE COALESCE(c.prev_hash, c.cur_hash) IS NULL
           OR COALESCE(c.prev_hash, c.cur_hash) <> c.attr_hash
    ),
    versions AS (
        SELECT
            v.credential, v.person_id, v.person_name, v.department, v.status, v.attr_hash,
            v.has_current, v.effective_from AS valid_from,
            LEAD(v.effective_from) OVER (PARTITION BY v.credential ORDER BY v.effective_from) AS valid_to,
            ROW_NUMBER() OVER (PARTITION BY v.credential ORDER BY v.effective_from) AS version_rank
        FROM changes AS v
    )
    SELECT
        'INSERT' AS row_action, NULL AS merge_key, credential, person_id, person_name, department,
        status, attr_hash, valid_from, valid_to, (valid_to IS NULL) AS is_current,
        SYSDATE() AS changed_at
    FROM versions
    UNION ALL
    SELECT
        'CLOSE', credential, credential, person_id, person_name, department,
        status, attr_hash, valid_from, NULL, FALSE,
        SYSDATE()
    FROM versions
    WHERE has_current AND version_rank = 1
) AS s
ON d.credential = s.merge_key AND d.is_current = TRUE AND d.user_sk > 0
WHEN MATCHED AND s.row_action = 'CLOSE' AND d.attr_hash <> s.attr_hash THEN
    UPDATE SET valid_to = s.valid_from, is_current = FALSE, updated_at = s.changed_at
WHEN NOT MATCHED AND s.row_action = 'INSERT' THEN
    INSERT (credential, person_id, person_name, department, status, attr_hash,
            valid_from, valid_to, is_current, inserted_at, updated_at)
    VALUES (s.credential, s.person_id, s.person_name, s.department, s.status, s.attr_hash,
            s.valid_from, s.valid_to, s.is_current, s.changed_at, s.changed_at);

-- SCD2 for readers/doors, same algorithm as TASK_BADGE_DIM_USERS.
CREATE OR REPLACE TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_ZONES
    WAREHOUSE = BADGE_WH
    COMMENT = 'SCD2 DIM_ZONES from REF_READERS'
    AFTER BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP
AS
MERGE INTO BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS d
USING (
    WITH cur AS (
        SELECT c.reader_id, c.attr_hash, c.valid_from
        FROM BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS c
        WHERE c.is_current = TRUE AND c.zone_sk > 0
    ),
    src AS (
        SELECT
            r.reader_id, r.door_id, r.door_name, r.zone_id, r.zone_name, r.site_id, r.site_name,
            r.security_level, r.effective_from,
            MD5(CONCAT_WS('|', COALESCE(r.door_id, ''), COALESCE(r.door_name, ''),
                          COALESCE(r.zone_id, ''), COALESCE(r.zone_name, ''),
                          COALESCE(r.site_id, ''), COALESCE(r.site_name, ''),
                          COALESCE(TO_VARCHAR(r.security_level), ''))) AS attr_hash
        FROM BADGE_DB.STAGING_LAYER.REF_READERS AS r
        QUALIFY ROW_NUMBER() OVER (
            PARTITION BY r.reader_id, r.effective_from ORDER BY r.loaded_at DESC) = 1
    ),
    cand AS (
        SELECT
            s.reader_id, s.door_id, s.door_name, s.zone_id, s.zone_name, s.site_id, s.site_name,
            s.security_level, s.effective_from, s.attr_hash, cur.attr_hash AS cur_hash,
            (cur.reader_id IS NOT NULL) AS has_current,
            LAG(s.attr_hash) OVER (PARTITION BY s.reader_id ORDER BY s.effective_from) AS prev_hash
        FROM src AS s
        LEFT JOIN cur ON cur.reader_id = s.reader_id
        WHERE cur.reader_id IS NULL OR s.effective_from > cur.valid_from
    ),
    changes AS (
        SELECT
            c.reader_id, c.door_id, c.door_name, c.zone_id, c.zone_name, c.site_id, c.site_name,
            c.security_level, c.effective_from, c.attr_hash, c.has_current
        FROM cand AS c
        WHERE COALESCE(c.prev_hash, c.cur_hash) IS NULL
           OR COALESCE(c.prev_hash, c.cur_hash) <> c.attr_hash
    ),
    versions AS (
        SELECT
            v.reader_id, v.door_id, v.door_name, v.zone_id, v.zone_name, v.site_id, v.site_name,
            v.security_level, v.attr_hash, v.has_current, v.effective_from AS valid_from,
            LEAD(v.effective_from) OVER (PARTITION BY v.reader_id ORDER BY v.effective_from) AS valid_to,
            ROW_NUMBER() OVER (PARTITION BY v.reader_id ORDER BY v.effective_from) AS version_rank
        FROM changes AS v
    )
    SELECT
        'INSERT' AS row_action, NULL AS merge_key, reader_id, door_id, door_name, zone_id,
        zone_name, site_id, site_name, security_level, attr_hash, valid_from, valid_to,
        (valid_to IS NULL) AS is_current, SYSDATE() AS changed_at
    FROM versions
    UNION ALL
    SELECT
        'CLOSE', reader_id, reader_id, door_id, door_name, zone_id,
        zone_name, site_id, site_name, security_level, attr_hash, valid_from, NULL,
        FALSE, SYSDATE()
    FROM versions
    WHERE has_current AND version_rank = 1
) AS s
ON d.reader_id = s.merge_key AND d.is_current = TRUE AND d.zone_sk > 0
WHEN MATCHED AND s.row_action = 'CLOSE' AND d.attr_hash <> s.attr_hash THEN
    UPDATE SET valid_to = s.valid_from, is_current = FALSE, updated_at = s.changed_at
WHEN NOT MATCHED AND s.row_action = 'INSERT' THEN
    INSERT (reader_id, door_id, door_name, zone_id, zone_name, site_id, site_name, security_level,
            attr_hash, valid_from, valid_to, is_current, inserted_at, updated_at)
    VALUES (s.reader_id, s.door_id, s.door_name, s.zone_id, s.zone_name, s.site_id, s.site_name,
            s.security_level, s.attr_hash, s.valid_from, s.valid_to, s.is_current, s.changed_at,
            s.changed_at);

-- Fact: new staged swipes, joined to the dimension versions valid at event_ts. Facts still on an
-- unknown member are re-evaluated on every run, so a badge or reader added later (with an
-- effective_from at or before the swipe) re-keys them; known keys are never rewritten.
CREATE OR REPLACE TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_FCT_ACCESS
    WAREHOUSE = BADGE_WH
    COMMENT = 'Load FCT_ACCESS_EVENTS with point-in-time dimension keys; re-key late-arriving members'
    AFTER BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_USERS, BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_ZONES
AS
MERGE INTO BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
USING (
    SELECT
        e.event_id,
        CASE
            WHEN e.credential IS NULL THEN -2
            ELSE COALESCE(u.user_sk, -1)
        END AS user_sk,
        COALESCE(z.zone_sk, -1) AS zone_sk,
        e.gateway_id, e.seq, e.reader_id, e.door_id, e.zone_id AS agent_zone_id, e.direction,
        e.event_type, e.credential, e.card_format, e.facility_code, e.card_number, e.detail,
        e.event_ts, TO_DATE(e.event_ts) AS event_date, e.swiped_at, e.event_ts_source,
        e.clock_synced, e.is_fault, e.ingested_at, e.staged_at,
        SYSDATE() AS loaded_at
    FROM BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS AS e
    LEFT JOIN BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS done
        ON done.event_id = e.event_id
    LEFT JOIN BADGE_DB.ANALYTICS_LAYER.DIM_USERS AS u
        ON u.credential = e.credential
       AND u.user_sk > 0
       AND e.event_ts >= u.valid_from
       AND (u.valid_to IS NULL OR e.event_ts < u.valid_to)
    LEFT JOIN BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS z
        ON z.reader_id = e.reader_id
       AND z.zone_sk > 0
       AND e.event_ts >= z.valid_from
       AND (z.valid_to IS NULL OR e.event_ts < z.valid_to)
    WHERE done.event_id IS NULL OR done.user_sk = -1 OR done.zone_sk = -1
) AS s
ON f.event_id = s.event_id
WHEN MATCHED AND (f.user_sk <> s.user_sk OR f.zone_sk <> s.zone_sk) THEN
    UPDATE SET user_sk = s.user_sk, zone_sk = s.zone_sk, updated_at = s.loaded_at
WHEN NOT MATCHED THEN
    INSERT (event_id, user_sk, zone_sk, gateway_id, seq, reader_id, door_id, agent_zone_id,
            direction, event_type, credential, card_format, facility_code, card_number, detail,
            event_ts, event_date, swiped_at, event_ts_source, clock_synced, is_fault, ingested_at,
            staged_at, loaded_at, updated_at)
    VALUES (s.event_id, s.user_sk, s.zone_sk, s.gateway_id, s.seq, s.reader_id, s.door_id,
            s.agent_zone_id, s.direction, s.event_type, s.credential, s.card_format,
            s.facility_code, s.card_number, s.detail, s.event_ts, s.event_date, s.swiped_at,
            s.event_ts_source, s.clock_synced, s.is_fault, s.ingested_at, s.staged_at,
            s.loaded_at, s.loaded_at);

-- The graph runs with the privileges of BADGE_TASK_ROLE (granted to SYSADMIN, which keeps control).
GRANT OWNERSHIP ON TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_FCT_ACCESS TO ROLE BADGE_TASK_ROLE COPY CURRENT GRANTS;
GRANT OWNERSHIP ON TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_ZONES TO ROLE BADGE_TASK_ROLE COPY CURRENT GRANTS;
GRANT OWNERSHIP ON TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_DIM_USERS TO ROLE BADGE_TASK_ROLE COPY CURRENT GRANTS;
GRANT OWNERSHIP ON TASK BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP TO ROLE BADGE_TASK_ROLE COPY CURRENT GRANTS;

-- Resume the children first, then the root (one call does both, in the right order).
SELECT SYSTEM$TASK_DEPENDENTS_ENABLE('BADGE_DB.STAGING_LAYER.TASK_BADGE_DEDUP');
