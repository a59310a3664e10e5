"""Helpers for the tests that drive a real `prefect server start` over its REST API."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str, every: float = 1.0) -> Any:
    """Poll `check()` until it returns something truthy (connection errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except (httpx.HTTPError, OSError):
            got = None
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (a server and its children), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def tail(path: str | Path, lines: int = 40) -> str:
    path = Path(path)
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def read_deployment(api: str, name: str) -> dict[str, Any] | None:
    r = httpx.get(f"{api}/deployments/name/{name}")
    return dict(r.json()) if r.status_code == 200 else None


def flow_runs(api: str, deployment_id: str) -> list[dict[str, Any]]:
    """The deployment's flow runs as the server holds them (the fields the tests read)."""
    r = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {}, "deployments": {"id": {"any_": [deployment_id]}}},
    )
    r.raise_for_status()
    keep = ("id", "name", "state_type", "state_name", "auto_scheduled", "created_by",
            "expected_start_time", "start_time", "end_time", "parameters")  # fmt: skip
    return [
        {**{k: x.get(k) for k in keep}, "state_message": (x.get("state") or {}).get("message")}
        for x in r.json()
    ]


@contextlib.contextmanager
def running_prefect(argv: list[str], port: int, log: Path, env: dict[str, str]) -> Iterator[str]:
    """A Prefect server started by `argv` (listening on `port`) in its own process group, its
    output in `log`; yields its API URL once /health answers, stops it on exit."""
    env = {**env, "PREFECT_API_URL": ""}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        api = f"http://127.0.0.1:{port}/api"
        try:
            wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120,
                     f"Prefect (log: {log})")  # fmt: skip
            yield api
        finally:
            stop(proc)


def mlops(
    root: Path, api: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """The `mlops` CLI in its own process, pointed at the server `api`."""
    return subprocess.run(
        [sys.executable, "-m", "mlops", "-w", str(root), *args],
        env={**os.environ, "PREFECT_API_URL": api, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
