"""Shared fixtures: isolated workspaces, the store on SQLite or PostgreSQL, the CLI in-process."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlops.settings import Workspace

VENV_BIN = str(Path(sys.executable).parent)
PG_URL = os.environ.get(
    "MLOPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("MLOPS_REQUIRE_POSTGRES", "") not in ("", "0", "false")


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test sees the developer's MLOPS_* settings; subprocesses find this venv's tools."""
    for key in ("MLOPS_HOME", "MLOPS_DATABASE_URL", "MLOPS_WORKSPACE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    for key, value in {
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A fresh, initialised workspace (its own git repo, DVC remote and SQLite store)."""
    from pipelines.init import init_workspace

    return init_workspace(tmp_path / "ws")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def mlops_cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run the `mlops` CLI in-process: `mlops_cli("-w", dir, "data", "list", "--json")`."""
    from mlops.cli import main

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


def _pg_available(url: str) -> str | None:
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL admin URL; skips loudly (or fails under MLOPS_REQUIRE_POSTGRES=1)."""
    problem = _pg_available(PG_URL)
    if problem:
        msg = f"PostgreSQL NOT TESTED: no server at {PG_URL} ({problem})"
        if REQUIRE_PG:
            pytest.fail(msg + " and MLOPS_REQUIRE_POSTGRES is set")
        print(f"\n*** {msg} ***", file=sys.stderr)
        pytest.skip(msg)
    return PG_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mlops_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL, once per backend: every store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real, temporary Prefect server for the whole test run (started once: ~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


# --- the browser: Debian's Chromium driven by Playwright, and `mlops ui` ---

REPO = Path(__file__).resolve().parents[1]
REQUIRE_BROWSER = os.environ.get("MLOPS_REQUIRE_BROWSER", "") not in ("", "0", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium and Playwright; skips loudly (fails under MLOPS_REQUIRE_BROWSER=1)."""
    problems = []
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        problems.append("no chromium on PATH (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("playwright is not installed (pip install -e '.[dev]')")
    if problems:
        msg = "Evidently UI NOT TESTED in a browser: " + "; ".join(problems)
        if REQUIRE_BROWSER:
            pytest.fail(msg + " and MLOPS_REQUIRE_BROWSER is set")
        print(f"\n*** {msg} ***", file=sys.stderr)
        warnings.warn(msg, stacklevel=1)
        pytest.skip(msg)
    assert path is not None
    return path


def _save_screen(page: Any, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    folder = Path(os.environ.get("MLOPS_TEST_SCREENS") or REPO / "artifacts" / "test-screens")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, folder / name)
    print(f"\nscreenshot: {folder / name}", file=sys.stderr)
    return shot


@dataclass(frozen=True)
class UiRun:
    url: str


@contextlib.contextmanager
def _mlops_ui(root: Path, tmp_path: Path) -> Iterator[UiRun]:
    """`mlops ui` as an operator starts it, in its own process; the URL is the one it prints."""
    log = tmp_path / "mlops-ui.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlops", "-w", str(root), "ui", "--port", str(free_port())],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None:
            found = re.search(r"Evidently UI: (http://\S+)", log.read_text())
            if found:
                url = found.group(1)
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlops ui did not start: {log.read_text()[-2000:]}")
            else:
                time.sleep(0.25)
        yield UiRun(url)
    finally:
        proc.terminate()  # its SIGTERM handler stops the Evidently server with it
        proc.wait(timeout=30)
    port = int(url.rsplit(":", 1)[1])
    from monitoring.ui import _port_taken

    assert not _port_taken("127.0.0.1", port), "mlops ui left the Evidently server running"


@pytest.fixture
def save_screen() -> Any:
    """`save_screen(page, tmp_path, name)`: a full-page screenshot kept as a test artifact (the
    test's tmp dir and $MLOPS_TEST_SCREENS, default artifacts/test-screens/)."""
    return _save_screen


@pytest.fixture
def mlops_ui() -> Any:
    """`with mlops_ui(workspace_root, tmp_path) as ui:` runs `mlops ui` in its own process;
    `ui.url` is the address it printed; on exit it is stopped, and the test fails if it left
    the Evidently server behind."""
    return _mlops_ui
