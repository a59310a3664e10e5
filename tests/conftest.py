"""Shared fixtures: isolated workspaces, the store on SQLite or PostgreSQL, the CLI in-process."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
