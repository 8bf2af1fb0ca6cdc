-- badge-gateway: deploy (or upgrade) from the Git repository, entirely inside Snowflake — e.g. in
-- a Snowsight worksheet, no local client. The same model files as deploy_all.sql, in the same
-- order, each run with EXECUTE IMMEDIATE FROM on the repository clone; then the dashboard.
-- Fill in the <PLACEHOLDERS> first (see sql/README.md, "Deploy from Git").

USE ROLE ACCOUNTADMIN;

-- Private repository only: a token with read access (uncomment, and the two lines marked below).
-- CREATE SECRET IF NOT EXISTS BADGE_DB_GIT_SECRET TYPE = PASSWORD USERNAME = '<GIT_USER>' PASSWORD = '<GIT_TOKEN>';

CREATE API INTEGRATION IF NOT EXISTS BADGE_GIT_API_INT
    API_PROVIDER = GIT_HTTPS_API
    API_ALLOWED_PREFIXES = ('<https://github.com/YOUR_ORG>')
    -- ALLOWED_AUTHENTICATION_SECRETS = (BADGE_DB.DEPLOY.BADGE_GIT_SECRET)   -- private repository
    ENABLED = TRUE
    COMMENT = 'badge-gateway: read the deployment repository';

GRANT USAGE ON INTEGRATION BADGE_GIT_API_INT TO ROLE SYSADMIN;

USE ROLE SYSADMIN;
CREATE DATABASE IF NOT EXISTS BADGE_DB;
CREATE SCHEMA IF NOT EXISTS BADGE_DB.DEPLOY COMMENT = 'The Git repository clone the model is deployed from';

CREATE GIT REPOSITORY IF NOT EXISTS BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO
    API_INTEGRATION = BADGE_GIT_API_INT
    ORIGIN = '<https://github.com/YOUR_ORG/badge-gateway.git>'
    -- GIT_CREDENTIALS = BADGE_DB.DEPLOY.BADGE_GIT_SECRET                    -- private repository
    COMMENT = 'badge-gateway source; sql/ holds the model';

-- Pull the latest commits of every branch and tag.
ALTER GIT REPOSITORY BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO FETCH;

-- The model, in deploy_all.sql's order (a test keeps the two lists equal). Absolute paths: the
-- file argument of EXECUTE IMMEDIATE FROM is a full stage path; no templating is used.
EXECUTE IMMEDIATE FROM @BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/00_setup.sql;
EXECUTE IMMEDIATE FROM @BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/01_raw_ingestion.sql;
EXECUTE IMMEDIATE FROM @BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/02_staging_layer.sql;
EXECUTE IMMEDIATE FROM @BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/03_analytics_layer.sql;
EXECUTE IMMEDIATE FROM @BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/04_tasks.sql;
EXECUTE IMMEDIATE FROM @BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/05_dynamic_tables.sql;
EXECUTE IMMEDIATE FROM @BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/06_monitoring.sql;

-- The dashboard straight from the repository clone (08_dashboard.sql does the same from a stage
-- with PUT, which only a local client can run).
USE ROLE SYSADMIN;
CREATE OR REPLACE STREAMLIT BADGE_DB.ANALYTICS_LAYER.BADGE_DASHBOARD
    ROOT_LOCATION = '@BADGE_DB.DEPLOY.BADGE_GATEWAY_REPO/branches/main/sql/streamlit'
    MAIN_FILE = 'streamlit_app.py'
    QUERY_WAREHOUSE = BADGE_WH
    TITLE = 'badge-gateway fleet'
    COMMENT = 'Fleet dashboard over the MON_* views';

GRANT USAGE ON STREAMLIT BADGE_DB.ANALYTICS_LAYER.BADGE_DASHBOARD TO ROLE BADGE_READER_ROLE;
