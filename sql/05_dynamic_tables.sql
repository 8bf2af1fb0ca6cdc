-- badge-gateway: per-zone hourly access counts and flows, refreshed by Snowflake within the lag.
-- Reads only tables (the fact and the zone dimension), so a plain GROUP BY can refresh incrementally.

USE ROLE SYSADMIN;
USE DATABASE BADGE_DB;
USE SCHEMA ANALYTICS_LAYER;

-- zone: the dimension version valid at swipe time; for unknown readers (zone_sk = -1) the zone the
-- gateway itself was configured with, so swipes are never dropped from the counts.
CREATE OR REPLACE DYNAMIC TABLE BADGE_DB.ANALYTICS_LAYER.DT_ZONE_HOURLY_OCCUPANCY
    TARGET_LAG = '5 minutes'
    WAREHOUSE = BADGE_WH
    REFRESH_MODE = AUTO
    INITIALIZE = ON_CREATE
    COMMENT = 'Per zone and UTC hour: access counts, in/out flow, distinct badges, faults, data-quality counts'
AS
SELECT
    COALESCE(IFF(f.zone_sk > 0, z.zone_id, NULL), f.agent_zone_id, '#UNKNOWN') AS zone_id,
    COALESCE(IFF(f.zone_sk > 0, z.site_id, NULL), '#UNKNOWN') AS site_id,
    DATE_TRUNC('hour', f.event_ts) AS hour_start,
    COUNT_IF(NOT f.is_fault) AS access_events,
    COUNT_IF(NOT f.is_fault AND f.direction = 'in') AS entries,
    COUNT_IF(NOT f.is_fault AND f.direction = 'out') AS exits,
    COUNT_IF(NOT f.is_fault AND f.direction = 'in') - COUNT_IF(NOT f.is_fault AND f.direction = 'out') AS net_flow,
    COUNT(DISTINCT IFF(f.is_fault, NULL, f.credential)) AS distinct_credentials,
    COUNT_IF(f.user_sk = -1) AS unknown_badge_events,
    COUNT_IF(f.is_fault) AS fault_events,
    COUNT_IF(NOT COALESCE(f.clock_synced, FALSE)) AS unsynced_clock_events,
    MAX(f.event_ts) AS last_event_ts
FROM BADGE_DB.ANALYTICS_LAYER.FCT_ACCESS_EVENTS AS f
LEFT JOIN BADGE_DB.ANALYTICS_LAYER.DIM_ZONES AS z
    ON z.zone_sk = f.zone_sk
GROUP BY 1, 2, 3;

-- Occupancy estimate: entries minus exits accumulated over the UTC day (people are assumed to
-- leave by midnight; a missed "out" swipe otherwise inflates the count forever). Never negative.
CREATE OR REPLACE VIEW BADGE_DB.ANALYTICS_LAYER.V_ZONE_OCCUPANCY
    COMMENT = 'Estimated occupancy per zone at the end of each hour (from DT_ZONE_HOURLY_OCCUPANCY)'
AS
SELECT
    o.zone_id,
    o.site_id,
    o.hour_start,
    o.access_events,
    o.entries,
    o.exits,
    GREATEST(0, SUM(o.net_flow) OVER (
        PARTITION BY o.zone_id, o.site_id, TO_DATE(o.hour_start)
        ORDER BY o.hour_start
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS estimated_occupancy
FROM BADGE_DB.ANALYTICS_LAYER.DT_ZONE_HOURLY_OCCUPANCY AS o;
