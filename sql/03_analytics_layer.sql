-- badge-gateway: SCD Type 2 dimensions, the access fact, and their unknown members.
-- Surrogate keys: -1 = unknown member (badge or reader not, or not yet, in the dimension at swipe
-- time); -2 (users only) = not applicable (pin, reader_fault and tamper events carry no credential).

USE ROLE SYSADMIN;
USE DATABASE BADGE_DB;
USE SCHEMA ANALYTICS_LAYER;

CREATE TABLE IF NOT EXISTS BADGE_DB.ANALYTICS_LAYER.DIM_USERS (
    user_sk         NUMBER AUTOINCREMENT START 1 INCREMENT 1,
    credential      VARCHAR         NOT NULL COMMENT 'business key',
    person_id       VARCHAR,
    person_name     VARCHAR,
    department      VARCHAR,
    status          VARCHAR,
    attr_hash       VARCHAR         COMMENT 'MD5 of the tracked attributes; a change opens a new version',
    valid_from      TIMESTAMP_NTZ(3) NOT NULL,
    valid_to        TIMESTAMP_NTZ(3) COMMENT 'exclusive; NULL for the current version',
    is_current      BOOLEAN         NOT NULL,
    inserted_at     TIMESTAMP_NTZ(6),
    updated_at      TIMESTAMP_NTZ(6),
    CONSTRAINT PK_DIM_USERS PRIMARY KEY (user_sk)
)
    COMMENT = 'SCD2: badge credential -> person, department, status; versions are [valid_from, valid_to)';

CREATE TABLE IF NOT EXISTS BADGE_DB.ANALYTICS_LAYER.DIM_ZONES (
    zone_sk         NUMBER AUTOINCREMENT START 1 INCREMENT 1,
    reader_id       VARCHAR         NOT NULL COMMENT 'business key',
    door_id         VARCHAR,
    door_name       VARCHAR,
    zone_id         VARCHAR,
    zone_name       VARCHAR,
    site_id         VARCHAR,
    site_name       VARCHAR,
    security_level  NUMBER(2, 0),
    attr_hash       VARCHAR,
    valid_from      TIMESTAMP_NTZ(3) NOT NULL,
    valid_to        TIMESTAMP_NTZ(3),
    is_current      BOOLEAN         NOT NULL,
    inserted_at     TIMESTAMP_NTZ(6),
    updated_at      TIMESTAMP_NTZ(6),
    CONSTRAINT PK_DIM_ZONES PRIMARY KEY (zone_sk)
)
    COMMENT = 'SCD2: reader/door -> zone, site, security level; versions are [valid_from, valid_to)';

CREATE TABLE IF NOT EXISTS BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS (
    event_id        VARCHAR         NOT NULL,
    user_sk         NUMBER          NOT NULL COMMENT 'DIM_USERS version valid at event_ts; -1 unknown, -2 n/a',
    zone_sk         NUMBER          NOT NULL COMMENT 'DIM_ZONES version valid at event_ts; -1 unknown',
    gateway_id      VARCHAR,
    seq             NUMBER(20, 0),
    reader_id       VARCHAR,
    door_id         VARCHAR         COMMENT 'door as configured on the gateway',
    agent_zone_id   VARCHAR         COMMENT 'zone as configured on the gateway (fallback when zone_sk = -1)',
    direction       VARCHAR,
    event_type      VARCHAR,
    credential      VARCHAR,
    card_format     VARCHAR,
    facility_code   NUMBER(10, 0),
    card_number     NUMBER(20, 0),
    detail          VARCHAR,
    event_ts        TIMESTAMP_NTZ(3) NOT NULL,
    event_date      DATE            NOT NULL,
    swiped_at       TIMESTAMP_NTZ(3),
    event_ts_source VARCHAR,
    clock_synced    BOOLEAN,
    is_fault        BOOLEAN,
    ingested_at     TIMESTAMP_NTZ(6),
    staged_at       TIMESTAMP_NTZ(6),
    loaded_at       TIMESTAMP_NTZ(6),
    updated_at      TIMESTAMP_NTZ(6),
    CONSTRAINT PK_FCT_ACCESS_EVENTS PRIMARY KEY (event_id)
)
    CLUSTER BY (event_date, zone_sk)
    COMMENT = 'One row per badge swipe (card, pin, reader_fault, tamper), keyed to the dimension versions valid at swipe time';

-- Unknown / not-applicable members, inserted once (MERGE keeps a redeploy idempotent).
MERGE INTO BADGE_DB.ANALYTICS_LAYER.DIM_USERS AS d
USING (
    SELECT -1 AS user_sk, '#UNKNOWN' AS credential, 'Unknown badge' AS person_name,
           'UNKNOWN' AS status, TO_TIMESTAMP_NTZ('1900-01-01 00:00:00') AS valid_from
    UNION ALL
    SELECT -2, '#NOT_APPLICABLE', 'No credential (pin or reader event)',
           'NOT_APPLICABLE', TO_TIMESTAMP_NTZ('1900-01-01 00:00:00')
) AS m
ON d.user_sk = m.user_sk
WHEN NOT MATCHED THEN
    INSERT (user_sk, credential, person_id, person_name, department, status, attr_hash,
            valid_from, valid_to, is_current)
    VALUES (m.user_sk, m.credential, m.credential, m.person_name, m.credential, m.status, m.credential,
            m.valid_from, NULL, TRUE);

MERGE INTO BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS d
USING (
    SELECT -1 AS zone_sk, '#UNKNOWN' AS reader_id, 'Unknown reader' AS zone_name,
           TO_TIMESTAMP_NTZ('1900-01-01 00:00:00') AS valid_from
) AS m
ON d.zone_sk = m.zone_sk
WHEN NOT MATCHED THEN
    INSERT (zone_sk, reader_id, door_id, door_name, zone_id, zone_name, site_id, site_name,
            security_level, attr_hash, valid_from, valid_to, is_current)
    VALUES (m.zone_sk, m.reader_id, m.reader_id, m.zone_name, m.reader_id, m.zone_name, m.reader_id,
            m.zone_name, NULL, m.reader_id, m.valid_from, NULL, TRUE);

GRANT SELECT, INSERT, UPDATE ON TABLE BADGE_DB.ANALYTICS_LAYER.DIM_USERS TO ROLE BADGE_TASK_ROLE;
GRANT SELECT, INSERT, UPDATE ON TABLE BADGE_DB.ANALYTICS_LAYER.DIM_ZONES TO ROLE BADGE_TASK_ROLE;
GRANT SELECT, INSERT, UPDATE ON TABLE BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS TO ROLE BADGE_TASK_ROLE;
-- Existing tables (future grants from setup cover objects created later only).
GRANT SELECT ON TABLE BADGE_DB.ANALYTICS_LAYER.DIM_USERS TO ROLE BADGE_READER_ROLE;
GRANT SELECT ON TABLE BADGE_DB.ANALYTICS_LAYER.DIM_ZONES TO ROLE BADGE_READER_ROLE;
GRANT SELECT ON TABLE BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS TO ROLE BADGE_READER_ROLE;
