-- badge-gateway: the Streamlit in Snowflake dashboard (sql/streamlit/), client-side deploy.
-- PUT is a client command (Snowflake CLI / SnowSQL), so run this from the sql/ directory like
-- deploy_all.sql. deploy_git.sql creates the same app straight from the Git repository instead.

USE ROLE SYSADMIN;
USE DATABASE BADGE_DB;
USE SCHEMA ANALYTICS_LAYER;

CREATE STAGE IF NOT EXISTS BADGE_DB.ANALYTICS_LAYER.DASHBOARD_STAGE
    DIRECTORY = (ENABLE = TRUE)
    COMMENT = 'Files of the badge-gateway Streamlit dashboard';

PUT 'file://streamlit/streamlit_app.py' @BADGE_DB.ANALYTICS_LAYER.DASHBOARD_STAGE/ OVERWRITE = TRUE AUTO_COMPRESS = FALSE;
PUT 'file://streamlit/streamlit_app_pages.py' @BADGE_DB.ANALYTICS_LAYER.DASHBOARD_STAGE/ OVERWRITE = TRUE AUTO_COMPRESS = FALSE;
PUT 'file://streamlit/badge_data.py' @BADGE_DB.ANALYTICS_LAYER.DASHBOARD_STAGE/ OVERWRITE = TRUE AUTO_COMPRESS = FALSE;
PUT 'file://streamlit/environment.yml' @BADGE_DB.ANALYTICS_LAYER.DASHBOARD_STAGE/ OVERWRITE = TRUE AUTO_COMPRESS = FALSE;

CREATE OR REPLACE STREAMLIT BADGE_DB.ANALYTICS_LAYER.BADGE_DASHBOARD
    ROOT_LOCATION = '@BADGE_DB.ANALYTICS_LAYER.DASHBOARD_STAGE'
    MAIN_FILE = 'streamlit_app.py'
    QUERY_WAREHOUSE = BADGE_WH
    TITLE = 'badge-gateway fleet'
    COMMENT = 'Fleet dashboard over the MON_* views';

GRANT USAGE ON STREAMLIT BADGE_DB.ANALYTICS_LAYER.BADGE_DASHBOARD TO ROLE BADGE_READER_ROLE;
