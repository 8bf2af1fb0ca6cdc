"""Layer 1: every .sql file parses under sqruff's Snowflake grammar, plus project rules the
grammar cannot check (docs/sql-testing.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import badge_sql_harness as h

SQL_FILES = sorted(h.SQL_DIR.glob("*.sql"))
OPTIONAL_FILES = {"07_task_error_notifications.sql"}
NOT_SOURCED = {"deploy_all.sql", "cleanup.sql"} | OPTIONAL_FILES


def sqruff_bin() -> str:
    """The sqruff binary of this interpreter's venv (installed from requirements.txt), or PATH's."""
    candidate = Path(sys.executable).parent / "sqruff"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("sqruff")
    if not found:
        pytest.fail("sqruff not found: pip install -r sql/tests/requirements.txt", pytrace=False)
    return found


def client_directives_blanked(text: str) -> str:
    """SnowSQL / Snowflake CLI directives (``!source``) are client-side, not SQL: blank them out."""
    return "\n".join("" if line.lstrip().startswith("!") else line for line in text.splitlines()) + "\n"


def sqruff_parse(sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sqruff_bin(), "parse", "--dialect", "snowflake", "-f", "none", "-"],
        input=client_directives_blanked(sql),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_parses(sql: str, what: str) -> None:
    res = sqruff_parse(sql)
    if res.returncode == 0:
        return
    # Narrow the failure down to the statement(s) sqruff rejects, for a readable message.
    bad = [s for s in h.split_statements(client_directives_blanked(sql)) if sqruff_parse(s + ";").returncode != 0]
    shown = "\n---\n".join(s[:400] for s in bad) or "(whole file only)"
    pytest.fail(f"{what}: sqruff cannot parse it\n{res.stdout[-800:]}{res.stderr[-800:]}\n{shown}", pytrace=False)


@pytest.mark.parametrize("path", SQL_FILES, ids=[p.name for p in SQL_FILES])
def test_every_sql_file_parses(path: Path) -> None:
    assert_parses(path.read_text(), path.name)


def test_sql_dir_has_the_model_files() -> None:
    names = {p.name for p in SQL_FILES}
    assert {"deploy_all.sql", "cleanup.sql", "00_setup.sql", "04_tasks.sql"} <= names
    assert len(names) >= 9


# --- the gate can fail -------------------------------------------------------------------

BROKEN = {
    "merge_without_then": "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED UPDATE SET a = 1;",
    "stream_option_typo": "CREATE STREAM s ON TABLE t APPEND_ONLYY = TRUE;",
    "pipe_dangling_where": (
        "CREATE PIPE p AS COPY INTO t (a) FROM (SELECT $1:a::VARCHAR "
        "FROM TABLE(DATA_SOURCE(TYPE => 'STREAMING')) WHERE);"
    ),
    "keyword_typo": "SELEC 1;",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_gate_rejects_broken_statement(name: str) -> None:
    assert sqruff_parse(BROKEN[name]).returncode != 0, f"sqruff accepted broken SQL ({name})"


def test_gate_rejects_a_broken_task_body_in_the_real_file() -> None:
    text = (h.SQL_DIR / "04_tasks.sql").read_text()
    mutated = text.replace("WHEN NOT MATCHED THEN", "WHEN NOT MATCHED", 1)
    assert mutated != text
    assert sqruff_parse(text).returncode == 0
    assert sqruff_parse(mutated).returncode != 0


# --- deploy / cleanup completeness -------------------------------------------------------


def test_deploy_all_sources_every_model_file_in_order() -> None:
    sourced = [p.name for p in h.deploy_order()]
    expected = sorted(p.name for p in SQL_FILES if p.name not in NOT_SOURCED)
    assert sourced == expected
    for p in h.deploy_order():
        assert p.exists(), p
    text = (h.SQL_DIR / "deploy_all.sql").read_text()
    for opt in OPTIONAL_FILES:  # optional scripts are listed but commented out (off by default)
        assert re.search(rf"^--\s*!source\s+{re.escape(opt)}\s*$", text, re.MULTILINE), opt


def test_deploy_all_splits_into_source_commands_like_the_clients_do() -> None:
    """snow sql and SnowSQL split with the connector's splitter; each !source must stand alone."""
    import io

    from snowflake.connector.util_text import split_statements

    text = (h.SQL_DIR / "deploy_all.sql").read_text()
    stmts = [s.strip() for s, _ in split_statements(io.StringIO(text), remove_comments=True) if s.strip()]
    assert stmts == [f"!source {p.name}" for p in h.deploy_order()]


_CREATE_RE = re.compile(
    r"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:SECURE\s+)?"
    r"(?P<kind>DATABASE|SCHEMA|WAREHOUSE|ROLE|USER|NOTIFICATION\s+INTEGRATION|DYNAMIC\s+TABLE|TABLE|VIEW|"
    r"PIPE|STREAM|TASK)\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>[\w.$]+)",
)


def _created_objects() -> list[tuple[str, str]]:
    out = []
    for path in SQL_FILES:
        if path.name in {"cleanup.sql", "deploy_all.sql"}:
            continue
        for stmt in h.split_statements(path.read_text()):
            m = _CREATE_RE.match(h._norm(stmt))
            if m:
                out.append((re.sub(r"\s+", " ", m.group("kind")), m.group("name")))
    return out


def test_cleanup_removes_everything_deploy_creates() -> None:
    created = _created_objects()
    assert len(created) > 20
    cleanup = " ".join(h._norm(s) for s in h.split_statements((h.SQL_DIR / "cleanup.sql").read_text()))
    assert f"DROP DATABASE IF EXISTS {h.DATABASE}" in cleanup
    missing = []
    for kind, name in created:
        if kind in {"WAREHOUSE", "ROLE", "USER", "NOTIFICATION INTEGRATION", "DATABASE"}:
            drop_kind = "INTEGRATION" if kind == "NOTIFICATION INTEGRATION" else kind
            if f"DROP {drop_kind} IF EXISTS {name}" not in cleanup:
                missing.append((kind, name))
        elif not name.startswith(f"{h.DATABASE}."):
            missing.append((kind, name))  # schema objects must be fully qualified inside BADGE_DB
    assert missing == [], f"created but never dropped by cleanup.sql: {missing}"
    # Tasks are suspended before anything is dropped.
    assert cleanup.index("ALTER TASK IF EXISTS") < cleanup.index("DROP TASK")


# --- task graph rules --------------------------------------------------------------------


def _tasks() -> dict[str, h.Task]:
    tasks: dict[str, h.Task] = {}
    for path in h.deploy_order():
        for stmt in h.split_statements(path.read_text()):
            if re.match(r"CREATE\s+(OR\s+REPLACE\s+)?TASK\b", h._norm(stmt)):
                t = h.parse_task(stmt, path.name)
                tasks[t.name] = t
    return tasks


def test_task_graph_shape() -> None:
    tasks = _tasks()
    assert len(tasks) == 4
    roots = [t for t in tasks.values() if not t.after]
    assert len(roots) == 1
    root = roots[0]
    assert root.schedule, "root task needs a SCHEDULE"
    assert root.when and root.when.upper().startswith("SYSTEM$STREAM_HAS_DATA("), root.when
    # Snowflake: all tasks of a graph live in one schema; every AFTER target exists.
    assert len({n.rsplit(".", 1)[0] for n in tasks}) == 1
    for t in tasks.values():
        assert all(a in tasks for a in t.after), (t.name, t.after)
        if t.after:
            assert t.schedule is None and t.when is None, f"child {t.name} must not have SCHEDULE/WHEN"


def test_task_bodies_are_single_dml_and_only_the_root_reads_the_stream() -> None:
    stream = "RAW_BADGE_EVENTS_STREAM"
    for t in _tasks().values():
        assert len(h.split_statements(t.body)) == 1, f"{t.name}: body must be one statement"
        assert t.body.upper().startswith(("MERGE", "INSERT", "DELETE", "UPDATE")), t.name
        for banned in ("EXECUTE IMMEDIATE", "DECLARE", "CALL ", "BEGIN"):
            assert banned not in t.body.upper(), (t.name, banned)
        reads_stream = stream in t.body.upper()
        assert reads_stream == (not t.after), f"{t.name}: only the root may read the stream"


def test_task_body_extraction_ignores_as_inside_strings_and_parens() -> None:
    t = h.parse_task(
        "CREATE OR REPLACE TASK S.T WAREHOUSE = W COMMENT = 'x as y' "
        "AFTER S.A, S.B WHEN SYSTEM$STREAM_HAS_DATA('a as b') AS INSERT INTO x SELECT 1 AS one"
    )
    assert t.name == "S.T"
    assert t.after == ["S.A", "S.B"]
    assert t.when == "SYSTEM$STREAM_HAS_DATA('a as b')"
    assert t.body == "INSERT INTO x SELECT 1 AS one"


# --- pipe rules --------------------------------------------------------------------------


def _pipe() -> h.Pipe:
    for path in h.deploy_order():
        for stmt in h.split_statements(path.read_text()):
            if re.match(r"CREATE\s+(OR\s+REPLACE\s+)?PIPE\b", h._norm(stmt)):
                return h.parse_pipe(stmt)
    pytest.fail("no CREATE PIPE in the model")


def test_pipe_select_is_flat_and_reads_every_agent_field() -> None:
    pipe = _pipe()
    assert pipe.target == "BADGE_DB.RAW_INGESTION.RAW_BADGE_EVENTS"
    read = [m.group(1) for e in pipe.select_exprs for m in [re.match(r"\$1:(\w+)::", e)] if m]
    assert read == list(h.AGENT_FIELDS), "pipe must map every agent field, in ROW.md order"
    assert "$1" in pipe.select_exprs  # the raw JSON is kept whole
    assert pipe.columns[-2:] == ["RAW_PAYLOAD", "INGESTED_AT"]


def test_flat_pipe_rule_rejects_a_join() -> None:
    with pytest.raises(h.HarnessError):
        h.parse_pipe(
            "CREATE PIPE p AS COPY INTO t (a) FROM (SELECT $1:a::VARCHAR "
            "FROM x JOIN TABLE(DATA_SOURCE(TYPE => 'STREAMING')))"
        )
    with pytest.raises(h.HarnessError):
        h.parse_pipe(
            "CREATE PIPE p AS COPY INTO t (a, b) FROM (SELECT $1:a::VARCHAR "
            "FROM TABLE(DATA_SOURCE(TYPE => 'STREAMING')))"
        )


def test_readme_mapping_table_matches_the_pipe() -> None:
    pipe = _pipe()
    readme = (h.SQL_DIR / "README.md").read_text()
    rows = re.findall(r"^\|\s*`(\w+|\$1)`\s*\|\s*`(\w+)`\s*\|\s*`([^`]+)`\s*\|", readme, re.MULTILINE)
    documented = {field: (col.upper(), typ.upper()) for field, col, typ in rows}
    for expr, col in zip(pipe.select_exprs, pipe.columns):
        m = re.match(r"\$1:(\w+)::(.+)$", expr)
        if not m:
            continue
        field, typ = m.group(1), m.group(2).replace(" ", "").upper()
        assert field in documented, f"README mapping table lacks {field}"
        assert documented[field][0] == col, (field, documented[field], col)
        assert documented[field][1].replace(" ", "") == typ, (field, documented[field], typ)
