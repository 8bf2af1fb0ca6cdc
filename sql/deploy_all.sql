-- badge-gateway: deploy everything, in order. Run from this directory:
--   snow sql -f deploy_all.sql            (Snowflake CLI)
--   snowsql -f deploy_all.sql             (SnowSQL)
-- Each file is idempotent, so a re-run upgrades views and tasks without dropping data.
!source 00_setup.sql
!source 01_raw_ingestion.sql
!source 02_staging_layer.sql
!source 03_analytics_layer.sql
!source 04_tasks.sql
!source 05_dynamic_tables.sql
!source 06_monitoring.sql
!source 08_dashboard.sql
-- Optional, off by default (fill in the placeholders first):
-- !source 07_task_error_notifications.sql
