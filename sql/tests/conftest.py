"""pytest fixtures for the Snowflake model tests: a fakesnow connection with sql/ deployed.

Deploying every file takes a few seconds under fakesnow, so the model is deployed once per session
into a DuckDB file and each test gets its own copy of that file (state never leaks between tests).
The files live on tmpfs (/dev/shm) when available: DuckDB syncs every commit, which is slow on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import fakesnow
import pytest
import snowflake.connector

sys.path.insert(0, str(Path(__file__).resolve().parent))

import badge_sql_harness as h  # noqa: E402

# sqlglot logs every Snowflake-only property fakesnow ignores (COMMENT, CLUSTER BY, …); that is expected.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


def _scratch_dir(fallback: Path) -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback
    return Path(tempfile.mkdtemp(prefix="badge-sql-", dir=base))


@pytest.fixture(scope="session")
def model_template(tmp_path_factory):
    """(directory holding BADGE_DB.db with the model deployed, the Deployment found in sql/)."""
    path = _scratch_dir(tmp_path_factory.getbasetemp())
    try:
        with fakesnow.patch(db_path=path):
            conn = snowflake.connector.connect(database=h.DATABASE, schema="PUBLIC")
            dep = h.deploy_model(conn)
            conn.cursor().execute("CHECKPOINT")
            conn.close()
        yield path, dep
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def conn(model_template, tmp_path):
    """A fresh fakesnow database with every file of deploy_all.sql applied (a copy of the template)."""
    template, dep = model_template
    db_dir = _scratch_dir(tmp_path)
    try:
        shutil.copytree(template, db_dir, dirs_exist_ok=True)
        with fakesnow.patch(db_path=db_dir):
            c = snowflake.connector.connect(database=h.DATABASE, schema="PUBLIC")
            c._badge_harness = dep
            try:
                yield c
            finally:
                c.close()
    finally:
        shutil.rmtree(db_dir, ignore_errors=True)
