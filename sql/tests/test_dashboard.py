"""The Streamlit dashboard (sql/streamlit/): every page renders under Streamlit's AppTest with the
numbers the views return for known data, and every page of the locally served app opens in a real
headless Chromium with no error element; a screenshot of each page goes to
target/dashboard-screenshots/. Run on its own (tests/tests/sql_dashboard.rs): the app keeps a
fakesnow patch open for its process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import badge_sql_harness as h

APP_DIR = h.SQL_DIR / "streamlit"
ROOT = h.SQL_DIR.parent
sys.path.insert(0, str(APP_DIR))

import run_local  # noqa: E402
import streamlit_app_pages  # noqa: E402,F401  (see below: page list without importing the app)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "target" / "dashboard-screenshots"


def _rows() -> list[dict]:
    now = datetime.utcnow()

    def at(minutes: int) -> str:
        return (now - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    rows = [h.agent_row("gw-north", i, at(30 - i), credential=f"H10301:1:{100 + i % 3}", reader_id="r1")
            for i in range(1, 6)]
    rows += [h.agent_row("gw-south", i, at(20 - i), credential="H10301:1:200", reader_id="r2", direction="out")
             for i in range(1, 4)]
    rows.append(rows[0])  # one redelivery
    rows.append(h.agent_row("gw-south", 4, at(5), reader_id="r2", event_type="tamper", detail="case", direction=None))
    return rows


@pytest.fixture(scope="module")
def db_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "db"
    summary = run_local.prepare(path, _rows())
    assert summary == {"rows": 10, "facts": 9, "graph": "SUCCEEDED"}
    return path


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def test_every_page_renders_with_the_view_numbers(db_template, tmp_path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BADGE_DASHBOARD_DB", str(_copy(db_template, tmp_path / "db")))
    for page in streamlit_app_pages.PAGES:
        at = AppTest.from_file(str(APP_DIR / "streamlit_app.py"), default_timeout=120)
        at.query_params["page"] = page
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.header[0].value == page
        if page == "Overview":
            m = {x.label: x.value for x in at.metric}
            assert m["Rows landed (2 days)"] == "10"
            assert m["Gateways reporting"] == "2" and m["Gateways silent"] == "0"
            assert m["Task graph"] == "RUNNING"
        if page == "Gateways":
            df = at.dataframe[0].value
            assert list(df["GATEWAY_ID"]) == ["gw-north", "gw-south"]
            assert list(df["LAST_OFFSET_TOKEN"]) == [5, 4]
            assert list(df["EVENTS_24H"]) == [5, 4]
        if page == "Data quality":
            dq = dict(zip(at.dataframe[0].value["METRIC"], at.dataframe[0].value["METRIC_VALUE"]))
            assert dq["raw_duplicate_rows"] == 1 and dq["tamper_events"] == 1
            # holders exist for badges 100 and 102 only: 101 (2 swipes) and 200 (3 swipes) are unknown
            assert dq["unknown_badge_events"] == 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_page_opens_in_headless_chromium_without_errors(db_template, tmp_path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: apt-get install chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = dict(os.environ, BADGE_DASHBOARD_DB=str(_copy(db_template, tmp_path / "db")))
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP_DIR / "streamlit_app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start:\n{server.stdout.read() if server.stdout else ''}")
                time.sleep(0.5)
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for name in streamlit_app_pages.PAGES:
                page.goto(f"http://127.0.0.1:{port}/?page={name.replace(' ', '+')}", timeout=60_000)
                page.get_by_role("heading", name=name).first.wait_for(timeout=60_000)
                # Wait until the script run is over (the status widget disappears), then look for errors.
                page.wait_for_function(
                    "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
                page.wait_for_timeout(1000)
                errors = page.locator('[data-testid="stException"]').count()
                shot = SHOTS / f"{name.lower().replace(' ', '_')}.png"
                page.screenshot(path=str(shot), full_page=False)
                assert errors == 0, f"{name}: {errors} error element(s); screenshot {shot}"
                assert shot.stat().st_size > 10_000, shot
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
