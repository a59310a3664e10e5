"""Start the service for a moment and ask it something: proof that what was packaged and
deployed really serves (the lifecycle flow's last step)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mlops.errors import MlopsError
from mlops.settings import Workspace
from serving import server_env
from serving.schema import smoke_records


@dataclass(frozen=True)
class ServeCheck:
    url: str
    version: str
    records: int
    seconds: float


@contextlib.contextmanager
def running_service(
    ws: Workspace, name: str, *, workers: int = 1, timeout: float = 120.0, log_name: str = "serve"
) -> Iterator[str]:
    """`bentoml serve` on a free loopback port, ready (/readyz) when this yields its URL,
    stopped on exit. Raises MlopsError with the server's last log line if it never gets ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = server_env(ws, name, workers=workers)
    bentoml = Path(sys.executable).parent / "bentoml"
    log = ws.home / "reports" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bentoml), "serve", "serving.service:MlopsService", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise MlopsError(f"the service did not become ready: {_last_line(log)}")
                time.sleep(0.2)
            yield url
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                # Gone already (a server that failed to start): the error above is the news.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def serve_check(
    ws: Workspace, name: str, schema: dict[str, object], *, timeout: float = 120.0
) -> ServeCheck:
    """Serve with one worker until /readyz, one request of the manifest's smoke rows, then
    stop. Raises MlopsError with the server's last log line."""
    started = time.monotonic()
    with running_service(ws, name, timeout=timeout, log_name="serve-check") as url:
        rows = smoke_records(schema)
        r = httpx.post(f"{url}/predict", json={"records": rows}, timeout=30)
        if r.status_code != 200:
            raise MlopsError(f"the service answered {r.status_code}: {r.text[:200]}")
        return ServeCheck(url, r.json()["version"], len(rows), time.monotonic() - started)


def send_records(url: str, records: list[dict[str, Any]], *, per_request: int = 100) -> list[str]:
    """POST the records to /predict in requests of `per_request`; returns the request ids.
    Any answer but 200 is an MlopsError naming it."""
    ids = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(0, len(records), per_request):
            r = client.post("/predict", json={"records": records[i : i + per_request]})
            if r.status_code != 200:
                raise MlopsError(f"the service answered {r.status_code}: {r.text[:200]}")
            ids.append(str(r.json()["request_id"]))
    return ids


def records_of(frame: Any, columns: list[str]) -> list[dict[str, Any]]:
    """Rows as a client sends them: plain Python values, null for a missing reading."""
    out = []
    for row in frame[columns].to_dict(orient="records"):
        out.append({k: _plain(v) for k, v in row.items()})
    return out


def _plain(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and v != v else v


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"
