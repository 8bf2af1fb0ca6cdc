"""The dashboard's page names, importable without starting the app (tests, screenshots)."""

PAGES = ["Overview", "Gateways", "Access", "Ingestion", "Data quality", "Cost and tasks"]
