-- badge-gateway: landing table, Snowpipe Streaming pipe, and the stream the task graph consumes.
-- The agent's row (notes: one JSON object per swipe) is mapped column by column; the whole object
-- is kept in RAW_PAYLOAD so nothing the agent sends is ever lost, even fields added later.

USE ROLE SYSADMIN;
USE DATABASE BADGE_DB;
USE SCHEMA RAW_INGESTION;

-- Deliberately no NOT NULL constraints: a row that violates one is rejected by the pipe and lost;
-- here it lands, and the data-quality views report it instead.
CREATE TABLE IF NOT EXISTS BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS (
    gateway_id      VARCHAR         COMMENT 'configured gateway id (also the channel name)',
    seq             NUMBER(20, 0)   COMMENT 'per-gateway sequence number; the channel offset token',
    event_id        VARCHAR         COMMENT '<gateway_id>:<seq>; the dedup key downstream',
    reader_id       VARCHAR         COMMENT 'configured reader id',
    zone_id         VARCHAR         COMMENT 'zone configured on the gateway for this reader',
    door_id         VARCHAR         COMMENT 'door configured on the gateway for this reader',
    direction       VARCHAR         COMMENT 'in, out or NULL',
    event_type      VARCHAR         COMMENT 'card, pin, reader_fault, tamper',
    credential      VARCHAR         COMMENT 'canonical credential string; NULL for pin and faults',
    card_format     VARCHAR         COMMENT 'card format name (JSON field "format"), e.g. H10301',
    facility_code   NUMBER(10, 0)   COMMENT 'facility/site code where the format has one',
    card_number     NUMBER(20, 0)   COMMENT 'card number where the format has one',
    raw_bits        VARCHAR         COMMENT 'raw frame bits, lower-case hex, MSB first',
    bit_count       NUMBER(5, 0)    COMMENT 'number of bits in the raw frame',
    detail          VARCHAR         COMMENT 'pin_length=N for pin events, reason for faults',
    swiped_at       TIMESTAMP_NTZ(3) COMMENT 'swipe time in UTC as stamped by the gateway',
    clock_synced    BOOLEAN         COMMENT 'gateway clock NTP-synchronised when stamped',
    agent_version   VARCHAR         COMMENT 'agent version that read the swipe',
    raw_payload     VARIANT         COMMENT 'the complete JSON row as sent by the agent',
    ingested_at     TIMESTAMP_NTZ(6) COMMENT 'UTC time the pipe wrote the row (SYSDATE at ingest)'
)
    CHANGE_TRACKING = TRUE
    DATA_RETENTION_TIME_IN_DAYS = 7
    COMMENT = 'One row per JSON object received from the agents; may contain redelivered duplicates';

-- Flat SELECT, one expression per column, so the transformation can be replayed locally.
CREATE PIPE IF NOT EXISTS BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_PIPE
    COMMENT = 'Snowpipe Streaming (high-performance) pipe for badge-gateway agents'
AS COPY INTO BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS (
    gateway_id, seq, event_id, reader_id, zone_id, door_id, direction, event_type,
    credential, card_format, facility_code, card_number, raw_bits, bit_count, detail,
    swiped_at, clock_synced, agent_version, raw_payload, ingested_at
)
FROM (
    SELECT
        $1:gateway_id::VARCHAR,
        $1:seq::NUMBER(20, 0),
        $1:event_id::VARCHAR,
        $1:reader_id::VARCHAR,
        $1:zone_id::VARCHAR,
        $1:door_id::VARCHAR,
        $1:direction::VARCHAR,
        $1:event_type::VARCHAR,
        $1:credential::VARCHAR,
        $1:format::VARCHAR,
        $1:facility_code::NUMBER(10, 0),
        $1:card_number::NUMBER(20, 0),
        $1:raw_bits::VARCHAR,
        $1:bit_count::NUMBER(5, 0),
        $1:detail::VARCHAR,
        $1:swiped_at::TIMESTAMP_NTZ(3),
        $1:clock_synced::BOOLEAN,
        $1:agent_version::VARCHAR,
        $1,
        SYSDATE()
    FROM TABLE(DATA_SOURCE(TYPE => 'STREAMING'))
);

-- Append-only: the landing table is insert-only, and an append-only stream is cheaper.
CREATE STREAM IF NOT EXISTS BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM
    ON TABLE BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS
    APPEND_ONLY = TRUE
    COMMENT = 'New raw swipes for the root task of the badge task graph';

-- Ingest service: exactly what Snowpipe Streaming needs (USAGE on db/schema from setup).
GRANT INSERT ON TABLE BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS TO ROLE BADGE_INGEST_ROLE;
GRANT OPERATE, MONITOR ON PIPE BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_PIPE TO ROLE BADGE_INGEST_ROLE;

-- Task owner reads the landing table through the stream.
GRANT SELECT ON TABLE BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS TO ROLE BADGE_TASK_ROLE;
GRANT SELECT ON STREAM BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS_STREAM TO ROLE BADGE_TASK_ROLE;
