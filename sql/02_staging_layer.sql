-- badge-gateway: deduplicated swipes and the reference tables the customer loads.

USE ROLE SYSADMIN;
USE DATABASE BADGE_DB;
USE SCHEMA STAGING_LAYER;

-- One row per event_id (first delivery wins). The primary key is documentation in Snowflake
-- (not enforced); the dedup task's QUALIFY is what guarantees it.
CREATE TABLE IF NOT EXISTS BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS (
    event_id        VARCHAR         NOT NULL,
    gateway_id      VARCHAR,
    seq             NUMBER(20, 0),
    reader_id       VARCHAR,
    zone_id         VARCHAR,
    door_id         VARCHAR,
    direction       VARCHAR,
    event_type      VARCHAR,
    credential      VARCHAR,
    card_format     VARCHAR,
    facility_code   NUMBER(10, 0),
    card_number     NUMBER(20, 0),
    raw_bits        VARCHAR,
    bit_count       NUMBER(5, 0),
    detail          VARCHAR,
    swiped_at       TIMESTAMP_NTZ(3) COMMENT 'swipe time as stamped by the gateway (UTC)',
    clock_synced    BOOLEAN,
    event_ts        TIMESTAMP_NTZ(3) COMMENT 'business time used downstream: swiped_at unless the unsynced clock is implausible',
    event_ts_source VARCHAR         COMMENT 'AGENT_SYNCED, AGENT_UNSYNCED or INGEST_FALLBACK',
    is_fault        BOOLEAN         COMMENT 'reader_fault or tamper event',
    agent_version   VARCHAR,
    raw_payload     VARIANT,
    ingested_at     TIMESTAMP_NTZ(6),
    staged_at       TIMESTAMP_NTZ(6),
    CONSTRAINT PK_STG_BADGE_EVENTS PRIMARY KEY (event_id)
)
    COMMENT = 'Badge swipes deduplicated on event_id, with the business timestamp resolved';

-- Customer-maintained: one row per credential and effective time. Load a new row whenever a
-- holder's attributes change (a full daily snapshot also works: unchanged rows are ignored).
CREATE TABLE IF NOT EXISTS BADGE_DB.STAGING_LAYER.REF_BADGE_HOLDERS (
    credential      VARCHAR         NOT NULL COMMENT 'canonical credential string, as the agent sends it',
    person_id       VARCHAR,
    person_name     VARCHAR,
    department      VARCHAR,
    status          VARCHAR         COMMENT 'active, suspended, revoked, ...',
    effective_from  TIMESTAMP_NTZ(3) NOT NULL COMMENT 'UTC time from which these attributes hold',
    loaded_at       TIMESTAMP_LTZ   DEFAULT CURRENT_TIMESTAMP() COMMENT 'later load wins for the same credential and effective_from'
)
    COMMENT = 'Reference: badge credential -> person, department, status (source of DIM_USERS)';

CREATE TABLE IF NOT EXISTS BADGE_DB.STAGING_LAYER.REF_READERS (
    reader_id       VARCHAR         NOT NULL COMMENT 'reader id as configured on the gateway',
    door_id         VARCHAR,
    door_name       VARCHAR,
    zone_id         VARCHAR,
    zone_name       VARCHAR,
    site_id         VARCHAR,
    site_name       VARCHAR,
    security_level  NUMBER(2, 0)    COMMENT '0 = public ... 9 = highest',
    effective_from  TIMESTAMP_NTZ(3) NOT NULL COMMENT 'UTC time from which these attributes hold',
    loaded_at       TIMESTAMP_LTZ   DEFAULT CURRENT_TIMESTAMP() COMMENT 'later load wins for the same reader and effective_from'
)
    COMMENT = 'Reference: reader/door -> zone, site, security level (source of DIM_ZONES)';

GRANT SELECT, INSERT, UPDATE ON TABLE BADGE_DB.STAGING_LAYER.STG_BADGE_EVENTS TO ROLE BADGE_TASK_ROLE;
GRANT SELECT ON TABLE BADGE_DB.STAGING_LAYER.REF_BADGE_HOLDERS TO ROLE BADGE_TASK_ROLE;
GRANT SELECT ON TABLE BADGE_DB.STAGING_LAYER.REF_READERS TO ROLE BADGE_TASK_ROLE;
