-- badge-gateway: account-level setup — database, schemas, warehouse, roles, ingest service user.
-- Run as a user holding SYSADMIN and SECURITYADMIN (and ACCOUNTADMIN for the one account-level grant).
-- Idempotent: every object is created IF NOT EXISTS so a redeploy never drops data or keys.

USE ROLE SYSADMIN;

CREATE DATABASE IF NOT EXISTS BADGE_DB
    COMMENT = 'badge-gateway: RFID badge swipes landed by Snowpipe Streaming';

CREATE SCHEMA IF NOT EXISTS BADGE_DB.RAW_INGESTION
    COMMENT = 'Landing table written only by the Snowpipe Streaming pipe; stream for the task graph';
CREATE SCHEMA IF NOT EXISTS BADGE_DB.STAGING_LAYER
    COMMENT = 'Deduplicated swipes, customer-loaded reference tables, the task graph';
CREATE SCHEMA IF NOT EXISTS BADGE_DB.ANALYTICS_LAYER
    COMMENT = 'SCD2 dimensions, access fact, occupancy dynamic table, monitoring views';

-- XSMALL is plenty for minute-level MERGEs of swipe volumes; auto-suspend keeps idle cost near zero.
CREATE WAREHOUSE IF NOT EXISTS BADGE_WH
    WAREHOUSE_SIZE = XSMALL
    AUTO_SUSPEND = 60
    AUTO_RESUME = TRUE
    INITIALLY_SUSPENDED = TRUE
    COMMENT = 'badge-gateway task graph and dynamic table refreshes';

USE ROLE SECURITYADMIN;

-- The Raspberry Pi agents authenticate as this role: it may only push rows through the pipe.
CREATE ROLE IF NOT EXISTS BADGE_INGEST_ROLE
    COMMENT = 'Snowpipe Streaming ingest for badge-gateway agents (USAGE + INSERT + OPERATE on the pipe only)';
-- Owner of the task graph: reads raw/stream, writes staging and analytics, nothing else.
CREATE ROLE IF NOT EXISTS BADGE_TASK_ROLE
    COMMENT = 'Owns and runs the badge-gateway task graph';
-- Analysts and dashboards: read-only on the analytics layer.
CREATE ROLE IF NOT EXISTS BADGE_READER_ROLE
    COMMENT = 'Read-only access to ANALYTICS_LAYER';

-- Keep the custom roles under SYSADMIN so administrators can manage what they own.
GRANT ROLE BADGE_INGEST_ROLE TO ROLE SYSADMIN;
GRANT ROLE BADGE_TASK_ROLE TO ROLE SYSADMIN;
GRANT ROLE BADGE_READER_ROLE TO ROLE SYSADMIN;

-- TYPE = SERVICE: no password, no MFA prompts, no Snowsight login; key-pair authentication only.
-- Register the agent's public key afterwards (see README):
--   ALTER USER BADGE_INGEST_SVC SET RSA_PUBLIC_KEY = '<base64 body of the agent public key>';
CREATE USER IF NOT EXISTS BADGE_INGEST_SVC
    TYPE = SERVICE
    DEFAULT_ROLE = BADGE_INGEST_ROLE
    COMMENT = 'badge-gateway edge agents (key-pair auth only)';
GRANT ROLE BADGE_INGEST_ROLE TO USER BADGE_INGEST_SVC;

-- Database-level grants are made by the owner (SYSADMIN); object grants follow in the object files.
USE ROLE SYSADMIN;

GRANT USAGE ON DATABASE BADGE_DB TO ROLE BADGE_INGEST_ROLE;
GRANT USAGE ON SCHEMA BADGE_DB.RAW_INGESTION TO ROLE BADGE_INGEST_ROLE;

GRANT USAGE ON DATABASE BADGE_DB TO ROLE BADGE_TASK_ROLE;
GRANT USAGE ON SCHEMA BADGE_DB.RAW_INGESTION TO ROLE BADGE_TASK_ROLE;
GRANT USAGE ON SCHEMA BADGE_DB.STAGING_LAYER TO ROLE BADGE_TASK_ROLE;
GRANT USAGE ON SCHEMA BADGE_DB.ANALYTICS_LAYER TO ROLE BADGE_TASK_ROLE;
GRANT USAGE ON WAREHOUSE BADGE_WH TO ROLE BADGE_TASK_ROLE;

GRANT USAGE ON DATABASE BADGE_DB TO ROLE BADGE_READER_ROLE;
GRANT USAGE ON SCHEMA BADGE_DB.ANALYTICS_LAYER TO ROLE BADGE_READER_ROLE;
GRANT USAGE ON WAREHOUSE BADGE_WH TO ROLE BADGE_READER_ROLE;
GRANT SELECT ON FUTURE TABLES IN SCHEMA BADGE_DB.ANALYTICS_LAYER TO ROLE BADGE_READER_ROLE;
GRANT SELECT ON FUTURE VIEWS IN SCHEMA BADGE_DB.ANALYTICS_LAYER TO ROLE BADGE_READER_ROLE;
GRANT SELECT ON FUTURE DYNAMIC TABLES IN SCHEMA BADGE_DB.ANALYTICS_LAYER TO ROLE BADGE_READER_ROLE;

-- Tasks run with their owner's privileges; EXECUTE TASK is an account-level privilege.
USE ROLE ACCOUNTADMIN;
GRANT EXECUTE TASK ON ACCOUNT TO ROLE BADGE_TASK_ROLE;

USE ROLE SYSADMIN;
USE WAREHOUSE BADGE_WH;
USE DATABASE BADGE_DB;
