"""pytest fixtures for the Snowflake model tests: a fakesnow connection with sql/ deployed."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import badge_sql_harness as h  # noqa: E402

# sqlglot logs every Snowflake-only property fakesnow ignores (COMMENT, CLUSTER BY, …); that is expected.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


@pytest.fixture
def conn():
    """A fresh in-process fakesnow database with every file of deploy_all.sql applied."""
    with h.fake_snowflake() as c:
        yield c
