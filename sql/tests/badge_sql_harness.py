"""Local test harness for badge-gateway's Snowflake model (``sql/``) on fakesnow.

It deploys the real, unmodified ``.sql`` files in ``deploy_all.sql`` order into an in-process
fakesnow (DuckDB) database and emulates what no local tool can run (see
``docs/sql-testing.md``):

* ``CREATE STREAM … APPEND_ONLY`` → a view over the table past a stored offset (DuckDB ``rowid``),
  advanced when the DML reading it succeeds, as Snowflake does on commit;
* ``CREATE PIPE … AS COPY INTO t (cols) FROM (SELECT $1:… FROM TABLE(DATA_SOURCE(…)))`` →
  ``INSERT INTO t (cols) SELECT … FROM <source table>`` with ``$1`` rewritten to a VARIANT column;
* ``CREATE TASK`` → (name, AFTER list, WHEN condition, body); bodies run unmodified in AFTER order;
* ``CREATE DYNAMIC TABLE … AS q`` → ``CREATE VIEW … AS q`` (its fully refreshed content);
* account objects, grants, ``ALTER TASK``, ``SYSTEM$`` calls and views over INFORMATION_SCHEMA table
  functions or ACCOUNT_USAGE → skipped and recorded in ``Deployment.skipped``.

Public entry points for other tests (e.g. a full-pipeline test fed from the Snowpipe emulator's
ledger): :func:`fake_snowflake`, :func:`deploy_model`, :func:`load_rows_through_pipe`,
:func:`run_dag`, :func:`query`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import fakesnow
import snowflake.connector
from snowflake.connector.util_text import split_statements as _sf_split
from sqlglot.dialects.snowflake import Snowflake
from sqlglot.tokens import Token, TokenType

SQL_DIR = Path(__file__).resolve().parent.parent
DATABASE = "BADGE_DB"
HARNESS_SCHEMA = f"{DATABASE}.TEST_HARNESS"
STREAMING_SOURCE = f"{HARNESS_SCHEMA}.STREAMING_SOURCE"
STREAM_OFFSETS = f"{HARNESS_SCHEMA}.STREAM_OFFSETS"

_DML_KEYWORDS = ("MERGE", "INSERT", "DELETE", "UPDATE")

# Statement heads that only a real account can execute (``docs/sql-testing.md``).
_SKIP_PATTERNS = [
    r"USE\s+(ROLE|WAREHOUSE)\b",
    r"CREATE\s+(OR\s+REPLACE\s+)?(WAREHOUSE|ROLE|USER|NOTIFICATION\s+INTEGRATION)\b",
    r"(GRANT|REVOKE)\b",
    r"ALTER\s+(TASK|USER|WAREHOUSE|NOTIFICATION\s+INTEGRATION)\b",
    r"EXECUTE\s+TASK\b",
    r"SELECT\s+SYSTEM\$",
    r"DROP\s+(WAREHOUSE|ROLE|USER|INTEGRATION|DATABASE|TASK|PIPE|STREAM|DYNAMIC\s+TABLE)\b",
    r"SHOW\b",
    r"CALL\b",
]


class HarnessError(AssertionError):
    """A project rule the harness relies on is broken, or a task/pipeline step failed."""


@dataclass
class Task:
    """A ``CREATE TASK`` split into the parts the harness needs."""

    name: str
    after: list[str]
    when: str | None
    schedule: str | None
    body: str
    source_file: str


@dataclass
class Pipe:
    """A streaming pipe reduced to its target, column list and flat SELECT."""

    name: str
    target: str
    columns: list[str]
    select_exprs: list[str]
    insert_sql: str


@dataclass
class Deployment:
    """What :func:`deploy_model` found in ``sql/`` and how each statement was treated."""

    tasks: dict[str, Task] = field(default_factory=dict)
    streams: dict[str, str] = field(default_factory=dict)  # stream name -> source table
    pipes: dict[str, Pipe] = field(default_factory=dict)
    dynamic_tables: list[str] = field(default_factory=list)
    executed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def root(self) -> Task:
        roots = [t for t in self.tasks.values() if not t.after]
        if len(roots) != 1:
            raise HarnessError(f"expected exactly one root task, found {[t.name for t in roots]}")
        return roots[0]

    @property
    def pipe(self) -> Pipe:
        if len(self.pipes) != 1:
            raise HarnessError(f"expected exactly one pipe, found {list(self.pipes)}")
        return next(iter(self.pipes.values()))


@dataclass
class DagRun:
    """Outcome of one pass of the task graph."""

    state: str  # "SUCCEEDED" or "SKIPPED"
    tasks_run: list[str] = field(default_factory=list)
    rows_affected: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- text helpers


def deploy_order(sql_dir: Path = SQL_DIR) -> list[Path]:
    """Files in the order ``deploy_all.sql`` sources them (commented-out lines excluded)."""
    files = []
    for line in (sql_dir / "deploy_all.sql").read_text().splitlines():
        m = re.match(r"\s*!source\s+(\S+)\s*$", line)
        if m:
            files.append(sql_dir / m.group(1))
    return files


def split_statements(text: str) -> list[str]:
    """Statements of a file, comments removed, without the trailing ``;``."""
    out = []
    for stmt, _is_put_get in _sf_split(io.StringIO(text), remove_comments=True):
        stmt = stmt.strip().rstrip(";").strip()
        if stmt:
            out.append(stmt)
    return out


def _norm(stmt: str) -> str:
    return re.sub(r"\s+", " ", stmt).strip().upper()


def _tokens(text: str) -> list[Token]:
    return list(Snowflake().tokenize(text))


def split_at_top_level_as(stmt: str) -> tuple[str, str]:
    """(header, body) split at the first ``AS`` keyword outside parentheses.

    Tokenizer-based, so ``COMMENT = '… as …'`` and ``WHEN SYSTEM$STREAM_HAS_DATA(…)`` are safe.
    """
    depth = 0
    for tok in _tokens(stmt):
        if tok.token_type == TokenType.L_PAREN:
            depth += 1
        elif tok.token_type == TokenType.R_PAREN:
            depth -= 1
        elif tok.token_type == TokenType.ALIAS and depth == 0:
            return stmt[: tok.start].strip(), stmt[tok.end + 1 :].strip()
    raise HarnessError(f"no top-level AS in: {stmt[:80]}…")


def _dotted_name(toks: list[Token], i: int) -> tuple[str, int]:
    """Read ``a.b.c`` starting at token ``i``; return (NAME, next index)."""
    parts = [toks[i].text]
    i += 1
    while i + 1 < len(toks) and toks[i].token_type == TokenType.DOT:
        parts.append(toks[i + 1].text)
        i += 2
    return ".".join(p.upper() for p in parts), i


def parse_task(stmt: str, source_file: str = "") -> Task:
    """Split ``CREATE [OR REPLACE] TASK name … [AFTER a, b] [WHEN cond] AS body``."""
    header, body = split_at_top_level_as(stmt)
    toks = _tokens(header)
    texts = [t.text.upper() for t in toks]
    i = texts.index("TASK") + 1
    while texts[i] in ("IF", "NOT", "EXISTS"):
        i += 1
    name, i = _dotted_name(toks, i)
    after: list[str] = []
    when = None
    schedule = None
    j = i
    while j < len(toks):
        t = texts[j]
        if t == "AFTER":
            j += 1
            while j < len(toks):
                n, j = _dotted_name(toks, j)
                after.append(n)
                if j < len(toks) and toks[j].token_type == TokenType.COMMA:
                    j += 1
                    continue
                break
            continue
        if toks[j].token_type == TokenType.WHEN:
            when = header[toks[j].end + 1 :].strip()
            break
        if t == "SCHEDULE" and j + 2 < len(toks):
            schedule = toks[j + 2].text
        j += 1
    return Task(name=name, after=after, when=when, schedule=schedule, body=body, source_file=source_file)


_PIPE_RE = re.compile(
    r"^COPY\s+INTO\s+(?P<target>[\w.$\"]+)\s*\((?P<cols>[^)]*)\)\s*FROM\s*\((?P<select>.*)\)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_DATA_SOURCE_RE = re.compile(
    r"FROM\s+TABLE\s*\(\s*DATA_SOURCE\s*\(\s*TYPE\s*=>\s*'STREAMING'\s*\)\s*\)\s*$", re.IGNORECASE
)


def _split_top_level_commas(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for tok in _tokens(text):
        if tok.token_type == TokenType.L_PAREN:
            depth += 1
        elif tok.token_type == TokenType.R_PAREN:
            depth -= 1
        elif tok.token_type == TokenType.COMMA and depth == 0:
            parts.append(text[start : tok.start].strip())
            start = tok.end + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def parse_pipe(stmt: str) -> Pipe:
    """Reduce ``CREATE PIPE … AS COPY INTO … FROM (SELECT … FROM TABLE(DATA_SOURCE(…)))``.

    Enforces the flat-SELECT rule (SQL rule 7 in the docs): one expression per target column, no JOIN, WHERE,
    GROUP BY or sub-select, and the streaming data source as the only FROM.
    """
    header, copy = split_at_top_level_as(stmt)
    htoks = _tokens(header)
    htexts = [t.text.upper() for t in htoks]
    i = htexts.index("PIPE") + 1
    while htexts[i] in ("IF", "NOT", "EXISTS"):
        i += 1
    name, _ = _dotted_name(htoks, i)
    m = _PIPE_RE.match(copy.strip())
    if not m:
        raise HarnessError(f"pipe {name}: not COPY INTO t (cols) FROM (SELECT …)")
    select = m.group("select").strip()
    if not _DATA_SOURCE_RE.search(select):
        raise HarnessError(f"pipe {name}: SELECT must read FROM TABLE(DATA_SOURCE(TYPE => 'STREAMING'))")
    select_list = _DATA_SOURCE_RE.sub("", select).strip()
    if not re.match(r"^SELECT\s", select_list, re.IGNORECASE):
        raise HarnessError(f"pipe {name}: transformation is not a SELECT")
    select_list = select_list[len("SELECT") :].strip()
    upper = _norm(select_list)
    for banned in (" FROM ", " JOIN ", " WHERE ", " GROUP BY ", " QUALIFY ", "(SELECT"):
        if banned in f" {upper} ":
            raise HarnessError(f"pipe {name}: SELECT is not flat ({banned.strip()})")
    exprs = _split_top_level_commas(select_list)
    cols = [c.strip().upper() for c in m.group("cols").split(",") if c.strip()]
    if len(exprs) != len(cols):
        raise HarnessError(f"pipe {name}: {len(cols)} columns but {len(exprs)} expressions")
    local_exprs = [re.sub(r"\$1\b", "PAYLOAD", e) for e in exprs]
    target = m.group("target").upper()
    insert_sql = (
        f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join(local_exprs)} FROM {STREAMING_SOURCE}"
    )
    return Pipe(name=name, target=target, columns=cols, select_exprs=exprs, insert_sql=insert_sql)


def _is_skipped(stmt: str) -> bool:
    head = _norm(stmt)
    if any(re.match(p, head) for p in _SKIP_PATTERNS):
        return True
    # Views over account-level telemetry cannot be created locally (parse-checked only).
    if re.match(r"CREATE\s+(OR\s+REPLACE\s+)?(SECURE\s+)?VIEW\b", head) and (
        "INFORMATION_SCHEMA." in head or "SNOWFLAKE.ACCOUNT_USAGE." in head
    ):
        return True
    return False


# --------------------------------------------------------------------------- deployment


def _exec(conn, sql: str, params: Sequence[Any] | None = None):
    cur = conn.cursor()
    cur.execute(sql, params)
    return cur


def query(conn, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Run a SELECT and return rows as dicts keyed by lower-case column name."""
    cur = _exec(conn, sql, params)
    names = [d[0].lower() for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _create_stream(conn, dep: Deployment, stmt: str) -> None:
    m = re.match(
        r"CREATE\s+(?:OR\s+REPLACE\s+)?STREAM\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>[\w.$]+)\s+"
        r"ON\s+TABLE\s+(?P<table>[\w.$]+)(?P<opts>.*)$",
        stmt,
        re.IGNORECASE | re.DOTALL,
    )
    if not m:
        raise HarnessError(f"unsupported CREATE STREAM: {stmt[:80]}")
    if not re.search(r"APPEND_ONLY\s*=\s*TRUE", m.group("opts"), re.IGNORECASE):
        raise HarnessError("only APPEND_ONLY streams are emulated (the landing table is insert-only)")
    name, table = m.group("name").upper(), m.group("table").upper()
    # A new stream starts at the table's current version: rows already there are not in it.
    _exec(conn, f"DELETE FROM {STREAM_OFFSETS} WHERE stream_name = %s", (name,))
    _exec(
        conn,
        f"INSERT INTO {STREAM_OFFSETS} (stream_name, consumed_rowid) "
        f"SELECT %s, COALESCE(MAX(rowid), -1) FROM {table}",
        (name,),
    )
    _exec(
        conn,
        f"""CREATE OR REPLACE VIEW {name} AS
            SELECT b.*, 'INSERT' AS "METADATA$ACTION", FALSE AS "METADATA$ISUPDATE",
                   CAST(b.rowid AS VARCHAR) AS "METADATA$ROW_ID"
            FROM {table} AS b
            WHERE b.rowid > (SELECT o.consumed_rowid FROM {STREAM_OFFSETS} AS o
                             WHERE o.stream_name = '{name}')""",
    )
    dep.streams[name] = table


def deploy_model(conn, files: Iterable[Path] | None = None) -> Deployment:
    """Run every statement of ``sql/`` (deploy_all order) against a fakesnow connection."""
    dep = Deployment()
    _exec(conn, f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    _exec(conn, f"CREATE SCHEMA IF NOT EXISTS {HARNESS_SCHEMA}")
    _exec(conn, f"CREATE TABLE IF NOT EXISTS {STREAMING_SOURCE} (PAYLOAD VARIANT)")
    _exec(conn, f"CREATE TABLE IF NOT EXISTS {STREAM_OFFSETS} (stream_name VARCHAR, consumed_rowid BIGINT)")
    for path in files if files is not None else deploy_order():
        for stmt in split_statements(path.read_text()):
            head = _norm(stmt)
            label = (path.name, head[:90])
            if _is_skipped(stmt):
                dep.skipped.append(label)
                continue
            if re.match(r"CREATE\s+(OR\s+REPLACE\s+)?TASK\b", head):
                task = parse_task(stmt, path.name)
                dep.tasks[task.name] = task
            elif re.match(r"CREATE\s+(OR\s+REPLACE\s+)?STREAM\b", head):
                _create_stream(conn, dep, stmt)
            elif re.match(r"CREATE\s+(OR\s+REPLACE\s+)?PIPE\b", head):
                pipe = parse_pipe(stmt)
                dep.pipes[pipe.name] = pipe
            elif re.match(r"CREATE\s+(OR\s+REPLACE\s+)?DYNAMIC\s+TABLE\b", head):
                header, body = split_at_top_level_as(stmt)
                name, _ = _dotted_name(_tokens(header), [t.text.upper() for t in _tokens(header)].index("TABLE") + 1)
                _exec(conn, f"CREATE OR REPLACE VIEW {name} AS {body}")
                dep.dynamic_tables.append(name)
            else:
                try:
                    _exec(conn, stmt)
                except Exception as exc:  # re-raise with the file and statement for a readable failure
                    raise HarnessError(f"{path.name}: statement failed under fakesnow: {exc}\n{stmt}") from exc
            dep.executed.append(label)
    conn._badge_harness = dep  # type: ignore[attr-defined]
    return dep


def deployment(conn) -> Deployment:
    """The :class:`Deployment` recorded on a connection by :func:`deploy_model`."""
    dep = getattr(conn, "_badge_harness", None)
    if dep is None:
        raise HarnessError("connection has no deployed model: call deploy_model(conn) first")
    return dep


@contextlib.contextmanager
def fake_snowflake() -> Iterator[Any]:
    """An in-process fakesnow connection with the whole model deployed."""
    with fakesnow.patch():
        conn = snowflake.connector.connect(database=DATABASE, schema="PUBLIC")
        try:
            deploy_model(conn)
            yield conn
        finally:
            conn.close()


# --------------------------------------------------------------------------- pipeline


def _coerce_rows(ndjson_rows: Any) -> list[str]:
    """Accept NDJSON text/bytes, or an iterable of JSON strings/bytes/dicts; return JSON strings."""
    if isinstance(ndjson_rows, bytes):
        ndjson_rows = ndjson_rows.decode("utf-8")
    if isinstance(ndjson_rows, str):
        items: Iterable[Any] = ndjson_rows.splitlines()
    else:
        items = ndjson_rows
    out = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if isinstance(item, str):
            if not item.strip():
                continue
            item = json.loads(item)  # fail here, with a clear error, on a malformed line
        if _is_ledger_entry(item):
            item = item["row"]
        out.append(json.dumps(item))
    return out


def _is_ledger_entry(item: Any) -> bool:
    """A Snowpipe-emulator ledger line wraps the agent row: {"pipe", "channel", …, "row": {…}}."""
    return isinstance(item, dict) and isinstance(item.get("row"), dict) and "channel" in item and "pipe" in item


def load_rows_through_pipe(conn, ndjson_rows: Any) -> int:
    """Land agent rows in RAW_BADGE_EVENTS exactly as the pipe's transformation would.

    ``ndjson_rows``: NDJSON text or bytes (one JSON object per line), or an iterable of JSON strings
    or dicts. Lines of the Snowpipe emulator's ledger (``{"pipe", "channel", "offset_token", …,
    "row": {…}}``) are unwrapped to their ``row``. Rows are loaded as one batch, like one append
    request. Returns the number of rows landed.
    """
    pipe = deployment(conn).pipe
    rows = _coerce_rows(ndjson_rows)
    if not rows:
        return 0
    _exec(conn, f"DELETE FROM {STREAMING_SOURCE}")
    array = "[" + ",".join(rows) + "]"
    _exec(
        conn,
        f"INSERT INTO {STREAMING_SOURCE} (PAYLOAD) "
        "SELECT f.value FROM TABLE(FLATTEN(INPUT => PARSE_JSON(%s))) AS f",
        (array,),
    )
    cur = _exec(conn, pipe.insert_sql)
    landed = cur.fetchone()[0]
    _exec(conn, f"DELETE FROM {STREAMING_SOURCE}")
    if landed != len(rows):
        raise HarnessError(f"pipe landed {landed} of {len(rows)} rows")
    return landed


def _topological(dep: Deployment) -> list[Task]:
    order: list[Task] = []
    done: set[str] = set()
    pending = list(dep.tasks.values())  # definition order breaks ties deterministically
    while pending:
        ready = [t for t in pending if all(a in done for a in t.after)]
        if not ready:
            raise HarnessError(f"task graph has a cycle or a missing AFTER target: {[t.name for t in pending]}")
        for t in ready:
            order.append(t)
            done.add(t.name)
        pending = [t for t in pending if t.name not in done]
    return order


def _when_holds(conn, dep: Deployment, when: str | None) -> bool:
    if when is None:
        return True

    def repl(m: re.Match[str]) -> str:
        stream = m.group(1).upper()
        if stream not in dep.streams:
            raise HarnessError(f"WHEN refers to unknown stream {stream}")
        return f"(SELECT COUNT(*) > 0 FROM {stream})"

    expr = re.sub(r"SYSTEM\$STREAM_HAS_DATA\s*\(\s*'([^']+)'\s*\)", repl, when, flags=re.IGNORECASE)
    if "SYSTEM$" in expr.upper():
        raise HarnessError(f"WHEN condition not emulated: {when}")
    return bool(_exec(conn, f"SELECT {expr}").fetchone()[0])


def _affected(cur) -> int:
    try:
        row = cur.fetchone()
    except Exception:  # noqa: BLE001 - DDL-like results have nothing to count
        return 0
    if not row:
        return 0
    return sum(int(v) for v in row if isinstance(v, (int, Decimal)) and not isinstance(v, bool))


def run_dag(conn) -> DagRun:
    """One scheduled run of the task graph: WHEN check, bodies in AFTER order, stream consumption."""
    dep = deployment(conn)
    root = dep.root
    if not _when_holds(conn, dep, root.when):
        return DagRun(state="SKIPPED")
    # Snapshot the stream positions at the start of the run: rows that land later stay unconsumed.
    ends = {
        s: _exec(conn, f"SELECT COALESCE(MAX(rowid), -1) FROM {table}").fetchone()[0]
        for s, table in dep.streams.items()
    }
    run = DagRun(state="SUCCEEDED")
    for task in _topological(dep):
        if not task.body.upper().startswith(_DML_KEYWORDS):
            raise HarnessError(f"{task.name}: NOT EXECUTABLE LOCALLY (body is not a single DML statement)")
        try:
            cur = _exec(conn, task.body)
        except Exception as exc:
            raise HarnessError(f"task {task.name} failed: {exc}") from exc
        run.tasks_run.append(task.name)
        run.rows_affected[task.name] = _affected(cur)
        for stream in dep.streams:
            if re.search(rf"\b{re.escape(stream)}\b", task.body, re.IGNORECASE):
                _exec(
                    conn,
                    f"UPDATE {STREAM_OFFSETS} SET consumed_rowid = %s WHERE stream_name = %s",
                    (ends[stream], stream),
                )
    return run


# --------------------------------------------------------------------------- agent rows

#: Fields of the agent's row, in the order of notes/ROW.md (the pipe reads exactly these).
AGENT_FIELDS = (
    "gateway_id", "seq", "event_id", "reader_id", "zone_id", "door_id", "direction", "event_type",
    "credential", "format", "facility_code", "card_number", "raw_bits", "bit_count", "detail",
    "swiped_at", "clock_synced", "agent_version",
)


def agent_row(
    gateway_id: str,
    seq: int,
    swiped_at: str,
    *,
    credential: str | None = None,
    reader_id: str = "R1",
    zone_id: str | None = "Z1",
    door_id: str | None = "D1",
    direction: str | None = "in",
    event_type: str = "card",
    detail: str | None = None,
    clock_synced: bool = True,
    agent_version: str = "0.1.0",
) -> dict[str, Any]:
    """A row shaped exactly like the agent's (every field present, JSON null where absent).

    ``swiped_at`` is RFC 3339 with milliseconds and ``Z``; ``credential`` like ``H10301:12:3456``
    fills format/facility_code/card_number as the agent would for a card event.
    """
    fmt = facility = number = raw_bits = bit_count = None
    if credential is not None:
        parts = credential.split(":")
        fmt = parts[0]
        if len(parts) == 3:
            facility, number = int(parts[1]), int(parts[2])
        raw_bits, bit_count = "02468ace", 26
    return {
        "gateway_id": gateway_id,
        "seq": seq,
        "event_id": f"{gateway_id}:{seq}",
        "reader_id": reader_id,
        "zone_id": zone_id,
        "door_id": door_id,
        "direction": direction,
        "event_type": event_type,
        "credential": credential,
        "format": fmt,
        "facility_code": facility,
        "card_number": number,
        "raw_bits": raw_bits,
        "bit_count": bit_count,
        "detail": detail,
        "swiped_at": swiped_at,
        "clock_synced": clock_synced,
        "agent_version": agent_version,
    }
