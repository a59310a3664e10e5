"""Schedules judged by what they run, on the README's commands: `mlops server` (a real
`prefect server start`), `mlops worker`, `mlops schedule ...`, `mlops schedule list`.

- `mlops schedule monitor --every 10s`, written to params.yaml while the worker runs (the
  worker follows it onto the server): the server's scheduler creates runs (auto-scheduled,
  nobody triggers them), the worker runs them, one completes with a drift report of the
  traffic the real server answered; `schedule list` says the schedule fires;
- the worker killed: the runs the scheduler creates stay Scheduled, then Late, and
  `schedule list` reports the schedule as not firing (`--check` exits 1); a worker stopped
  (SIGTERM) has Prefect pause its deployments, reported as not firing too;
- `mlops schedule retrain --cron "* * * * *"` and the worker back: a scheduled retrain
  completes, trained on the batch that arrived since production's;
- on SQLAlchemy 2.1 the first of these found no run at all (Prefect 3.8.8's scheduler failed
  every loop): pyproject.toml pins it below 2.1 and requirements.lock holds what this ran on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect_kit import (
    flow_runs,
    free_port,
    mlops,
    read_deployment,
    running_prefect,
    stop,
    tail,
    wait_for,
)

from mlops.settings import Workspace
from mlops.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL: dict[str, dict[str, Any]] = {
    "train": {"epochs": 8, "patience": 2, "hidden": [16], "device": "cpu"},
    "compress": {"finetune_epochs": 1, "distill_epochs": 1, "latency_repeats": 5},
    "serve": {"bento": False, "check": False, "poll_s": 0.5, "log_flush_s": 0.5},
    "monitor": {"min_rows": 50},
    # A run due 10 s ago that has not started: not firing. The worker polls every 10 s, so a
    # healthy schedule can read so for a moment: the test polls until it reads firing.
    "loop": {"schedule_grace_s": 10},
}
TRAFFIC = 300


def _mlops(ws: Workspace, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    return mlops(ws.root, api, *args, timeout=300)


@pytest.fixture(scope="module")
def sched_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace as `make run` leaves one: a production version serving traffic, logged in
    the prediction log, and a validated batch that arrived since (what a retrain learns)."""
    import httpx

    from pipelines.gate import promote
    from pipelines.ingest import ingest, load_source
    from pipelines.init import init_workspace
    from pipelines.pipeline import write_overrides
    from pipelines.registry import train_and_register
    from pipelines.sources import AI4I_SPEC, generate_ai4i
    from pipelines.validate import validate_batch
    from serving.smoke import records_of, running_service

    for key in ("MLOPS_HOME", "MLOPS_DATABASE_URL", "MLOPS_WORKSPACE"):
        os.environ.pop(key, None)
    ws = init_workspace(tmp_path_factory.mktemp("sched") / "ws")
    write_overrides(ws, SMALL)

    def batch(store: Store, seed: int) -> None:
        b = ingest(ws, store, load_source(ws, "ai4i", rows=1500, seed=seed)).batch
        report = validate_batch(ws, store, b.id, policy="warn", min_rows=100, max_rows=10**7)
        assert report.outcome in ("passed", "warned")

    with Store.open(ws.database_url) as store:
        batch(store, seed=5)
        first = train_and_register(ws, store, [])
        promote(store, first.ref, "production", reason="test setup", actor="test",
                override=first.stage != "staging")  # fmt: skip
    packaged = subprocess.run(
        [sys.executable, "-m", "mlops", "-w", str(ws.root), "package", first.ref, "--no-bento"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr
    # Traffic the real server answered and logged: what a scheduled monitor run reads.
    records = records_of(generate_ai4i(TRAFFIC, 9), list(AI4I_SPEC.features))
    with running_service(ws, "ai4i", timeout=180, log_name="sched-serve") as url:
        for i in range(0, TRAFFIC, 50):
            r = httpx.post(f"{url}/predict", json={"records": records[i : i + 50]}, timeout=60)
            assert r.status_code == 200, r.text[:300]
    with Store.open(ws.database_url) as store:
        batch(store, seed=6)
    return ws


@pytest.fixture(scope="module")
def server(sched_ws: Workspace) -> Iterator[str]:
    """`mlops server` on a free port: its API URL."""
    port = free_port()
    argv = [sys.executable, "-m", "mlops", "-w", str(sched_ws.root), "server", "--port", str(port)]
    with running_prefect(argv, port, sched_ws.home / "server-console.log", dict(os.environ)) as api:
        yield api


class Worker:
    """`mlops worker` in its own process group, started and stopped by the test."""

    def __init__(self, ws: Workspace, api: str) -> None:
        self.ws, self.api = ws, api
        self.log = ws.home / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlops", "-w", str(self.ws.root), "worker"],
                env={**os.environ, "PREFECT_API_URL": self.api},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        """As Ctrl-C or a service manager stops it: SIGTERM, and it shuts down."""
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def kill(self) -> None:
        """As a crash or an OOM kill ends it: no shutdown at all."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None


def _listed(ws: Workspace, api: str) -> dict[str, dict[str, Any]]:
    done = _mlops(ws, api, "schedule", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {h["what"]: h for h in json.loads(done.stdout)}


def _completed_auto_run(api: str, name: str) -> dict[str, Any] | None:
    found = read_deployment(api, name)
    if found is None:
        return None
    runs = [r for r in flow_runs(api, found["id"]) if r["auto_scheduled"]]
    done = [r for r in runs if r["state_type"] == "COMPLETED"]
    failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
    assert not failed, [(r["name"], r["state_name"], r["state_message"]) for r in failed]
    return done[0] if done else None


def test_scheduled_runs_complete_and_a_stopped_worker_is_reported(
    sched_ws: Workspace, server: str
) -> None:
    ws, api = sched_ws, server
    with Store.open(ws.database_url) as store:
        reports_before = len(store.list_drift_reports("ai4i"))
        known = {m.id for m in store.list_models("ai4i")}
        production = store.production_model("ai4i")
        assert production is not None
        (new_batch,) = [b.id for b in store.trainable_batches("ai4i")
                        if b.id not in production.batch_ids]  # fmt: skip
    worker = Worker(ws, api)
    worker.start()
    try:
        # Set in params.yaml only (no PREFECT_API_URL: a hand edit, or `mlops schedule` racing
        # the worker's start-up, which applies what it read before): the running worker
        # follows params.yaml and puts the schedule on the server.
        done = _mlops(ws, "", "schedule", "monitor", "--every", "10s")
        assert done.returncode == 0, done.stderr
        assert "every 10s" in done.stdout and "monitor_every_s: 10" in ws.params_path.read_text()
        try:
            run = wait_for(lambda: _completed_auto_run(api, "mlops-monitor/monitor"), 120,
                           "a scheduled monitor run to complete")  # fmt: skip
        except AssertionError as exc:
            # What an operator would see: `schedule list` names the scheduler's error.
            listed = _mlops(ws, api, "schedule", "list").stdout
            raise AssertionError(f"{exc}\n{listed}\n{tail(worker.log)}") from None
        # Created by the server's scheduler, not by a person or an automation.
        assert run["auto_scheduled"] is True, run
        assert run["created_by"]["type"] == "SCHEDULE", run["created_by"]
        with Store.open(ws.database_url) as store:
            assert len(store.list_drift_reports("ai4i")) > reports_before

        # A new schedule reads "waiting" until its first due time is past the grace.
        listed = wait_for(
            lambda: (h := _listed(ws, api)["monitor"])["status"] == "firing" and h, 90,
            "schedule list to report the monitor schedule as firing", every=3,
        )  # fmt: skip
        assert listed["schedule"] == "every 10s"
        # The latest due run may be any state but failed: every 10 s one is being submitted.
        assert listed["last_run"]["state_type"] not in ("FAILED", "CRASHED"), listed
        assert datetime.fromisoformat(listed["next_run"]) > datetime.now(UTC)
        assert _mlops(ws, api, "schedule", "list", "--check").returncode == 0

        # The worker dies (no shutdown): the scheduler goes on creating runs, nothing
        # starts them.
        worker.kill()
        stalled = wait_for(
            lambda: (h := _listed(ws, api)["monitor"])["status"] == "not firing" and h, 90,
            "schedule list to report the monitor schedule as not firing",
        )  # fmt: skip
        assert "has not started" in stalled["reason"], stalled
        assert "start `mlops worker`" in stalled["reason"]
        check = _mlops(ws, api, "schedule", "list", "--check")
        assert check.returncode == 1 and "not firing" in check.stdout, check.stdout

        # The worker back, on a cron line this time: a scheduled retrain of the new batch.
        assert _mlops(ws, api, "schedule", "monitor", "--off").returncode == 0
        done = _mlops(ws, api, "schedule", "retrain", "--cron", "* * * * *")
        assert done.returncode == 0, done.stderr
        worker.start()
        try:
            run = wait_for(lambda: _completed_auto_run(api, "mlops-retrain/retrain"), 300,
                           "a scheduled retrain run to complete", every=3)  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{tail(worker.log)}") from None
        assert run["auto_scheduled"] is True, run
        assert run["created_by"] == {**run["created_by"], "type": "SCHEDULE"}, run
        with Store.open(ws.database_url) as store:
            new = [m for m in store.list_models("ai4i") if m.id not in known]
        trained = [m for m in new if m.parent_id is None]
        assert trained and new_batch in trained[0].batch_ids, new

        listed = _listed(ws, api)
        assert listed["retrain"]["status"] == "firing", listed["retrain"]
        assert listed["monitor"]["status"] == "off", listed["monitor"]
        status = _mlops(ws, api, "status")
        assert status.returncode == 0, status.stderr
        assert "schedules" in status.stdout and "cron * * * * *" in status.stdout, status.stdout

        # A worker stopped as Ctrl-C stops it: Prefect pauses what it served.
        worker.stop()
        stopped = _listed(ws, api)["retrain"]
        assert stopped["status"] == "not firing" and "worker stopped" in stopped["reason"]
    finally:
        worker.stop()


def test_an_unanswering_server_is_one_line(sched_ws: Workspace) -> None:
    api = f"http://127.0.0.1:{free_port()}/api"
    listed = _mlops(sched_ws, api, "schedule", "list")
    assert listed.returncode != 0
    assert listed.stderr.strip().count("\n") == 0, listed.stderr
    assert "did not answer" in listed.stderr and "mlops server" in listed.stderr
    # Setting a schedule there fails the same way, and leaves params.yaml as it was.
    before = sched_ws.params_path.read_bytes()
    done = _mlops(sched_ws, api, "schedule", "monitor", "--every", "5m")
    assert done.returncode != 0 and "did not answer" in done.stderr, done.stderr
    assert sched_ws.params_path.read_bytes() == before
