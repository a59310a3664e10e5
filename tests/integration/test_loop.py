"""The closed loop on a real Prefect server (`prefect server start`, its own home), a real
`mlops worker` and the automation `mlops automations install` registers:

drifted traffic in the prediction log -> `mlops monitor` five times in a row -> the store
decides: the first alert retrains, the cooldown suppresses four -> the events reach Prefect ->
the automation runs the retrain deployment exactly once -> the run claims its drift event,
trains on the newest validated data and packages the result. `mlops schedule` puts the
deployment on a cron line the server then holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlops.settings import Workspace
from mlops.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = {
    "ingest": {"rows": 3000},
    "train": {"epochs": 4, "patience": 2, "hidden": [32, 32], "device": "cpu"},
    "compress": {"finetune_epochs": 1, "distill_epochs": 3, "latency_repeats": 20},
    "serve": {"bento": False, "check": False},
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except (httpx.HTTPError, OSError):
            got = None
        if got:
            return got
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` with a home of its own (SQLite): its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api"
    try:
        _wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "Prefect")
        yield api
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def _mlops(ws: Workspace, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlops", "-w", str(ws.root), *args],
        env={**os.environ, "PREFECT_API_URL": api, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _validated_batch(ws: Workspace, store: Store, seed: int, drift: str = "") -> str:
    from pipelines.ingest import ingest, load_source
    from pipelines.validate import validate_batch

    batch = ingest(ws, store, load_source(ws, "ai4i", rows=3000, seed=seed, drift=drift)).batch
    report = validate_batch(ws, store, batch.id, policy="warn", min_rows=100, max_rows=10**7)
    assert report.outcome in ("passed", "warned")
    return batch.id


def _log_traffic(ws: Workspace, store: Store, rows: int) -> None:
    """Served traffic, 3 K warmer than the data, written by the serving log's own writer."""
    from mlops.predictions import Answered, PredictionLog
    from pipelines.artifact import load_predictor
    from pipelines.gate import model_dir
    from pipelines.sources import AI4I_SPEC, Ai4iDrift, generate_ai4i

    production = store.production_model("ai4i")
    assert production is not None
    predictor = load_predictor(model_dir(ws, production))
    frame = generate_ai4i(rows, 11, Ai4iDrift(ambient_shift_k=3.0))[list(AI4I_SPEC.features)]
    scores = predictor.scores(frame)
    log = PredictionLog(ws.predictions_dir)
    for i in range(0, rows, 100):
        part = frame.iloc[i : i + 100]
        log.append(
            Answered(
                request_id=f"req-{i}",
                ts=datetime.now(UTC),
                model="ai4i",
                version=production.version,
                route="production",
                inputs={c: part[c].tolist() for c in part.columns},
                predictions=[str(predictor.preprocessor.classes[k]) for k in
                             scores[i : i + 100].argmax(axis=1)],
                scores=np.asarray(scores[i : i + 100, 1], dtype=np.float64),
                latency_ms=1.0,
            )
        )  # fmt: skip
    log.close()


@pytest.fixture(scope="module")
def loop_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace whose first ai4i version is in production and serving drifted traffic."""
    from pipelines.gate import promote
    from pipelines.init import init_workspace
    from pipelines.pipeline import write_overrides
    from pipelines.registry import train_and_register

    for key in ("MLOPS_HOME", "MLOPS_DATABASE_URL", "MLOPS_WORKSPACE"):
        os.environ.pop(key, None)
    ws = init_workspace(tmp_path_factory.mktemp("loop") / "ws")
    write_overrides(ws, SMALL)
    with Store.open(ws.database_url) as store:
        _validated_batch(ws, store, seed=5)
        first = train_and_register(ws, store, [])
        promote(
            store, first.ref, "production", reason="test setup", actor="test",
            override=first.stage != "staging",
        )  # fmt: skip
        _log_traffic(ws, store, 2000)
        # New data arrived (and passed validation) since: what the retrain will learn from.
        _validated_batch(ws, store, seed=6, drift="ambient_shift_k=3")
    return ws


def test_five_drift_alerts_start_exactly_one_retrain(loop_ws: Workspace, prefect_api: str) -> None:
    ws = loop_ws
    worker_log = (ws.home / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "mlops", "-w", str(ws.root), "worker"],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deployment = _wait(
            lambda: _deployment(prefect_api, "mlops-retrain/retrain"), 120, "the deployment"
        )
        installed = _mlops(ws, prefect_api, "automations", "install")
        assert installed.returncode == 0, installed.stderr
        # Installing again updates the one automation instead of adding a second.
        again = _mlops(ws, prefect_api, "automations", "install")
        assert again.returncode == 0 and "updated" in again.stdout, again.stderr
        found = httpx.post(f"{prefect_api}/automations/filter", json={}).json()
        assert [a["name"] for a in found].count("mlops-retrain-on-drift") == 1

        for _ in range(5):
            run = _mlops(ws, prefect_api, "monitor", "--last", "2000", "--json")
            assert run.returncode == 0, run.stderr

        with Store.open(ws.database_url) as store:
            events = store.list_drift_events("ai4i")
        assert [e.decision for e in events] == ["retrain"] + ["suppressed"] * 4

        def completed() -> list[dict[str, Any]]:
            runs = _runs(prefect_api, deployment["id"])
            return [r for r in runs if r["state_type"] == "COMPLETED"]

        (done,) = _wait(completed, 420, "the retrain run to complete")
        time.sleep(5)  # a second run, if the debounce failed, would have been created by now
        runs = _runs(prefect_api, deployment["id"])
        assert len(runs) == 1, [(r["name"], r["state_type"]) for r in runs]

        with Store.open(ws.database_url) as store:
            events = store.list_drift_events("ai4i")
            models = store.list_models("ai4i")
        assert events[0].flow_run_id == done["id"]  # the run that the first alert caused
        assert all(e.flow_run_id is None for e in events[1:])
        listed = _mlops(ws, prefect_api, "drift", "events")
        assert (
            listed.returncode == 0 and "cooldown" in listed.stdout and done["id"] in listed.stdout
        )
        assert len(models) > 1  # the retrain trained on the new batch and registered a version
        artifacts = httpx.post(
            f"{prefect_api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [done["id"]]}}},
        ).json()
        assert any(a["key"] == "retrain-summary" for a in artifacts)
    finally:
        _stop(worker)
        worker_log.close()


def test_schedule_puts_the_deployment_on_a_cron_line(loop_ws: Workspace, prefect_api: str) -> None:
    bad = _mlops(loop_ws, prefect_api, "schedule", "retrain", "--cron", "every day")
    assert bad.returncode != 0 and "not a cron line" in bad.stderr
    done = _mlops(loop_ws, prefect_api, "schedule", "retrain", "--cron", "0 3 * * *")
    assert done.returncode == 0, done.stderr
    deployment = _deployment(prefect_api, "mlops-retrain/retrain")
    assert deployment is not None
    crons = [s["schedule"].get("cron") for s in deployment["schedules"]]
    assert crons == ["0 3 * * *"]
    assert 'retrain_cron: "0 3 * * *"' in loop_ws.params_path.read_text() or (
        "retrain_cron: 0 3 * * *" in loop_ws.params_path.read_text()
    )


def _deployment(api: str, name: str) -> dict[str, Any] | None:
    r = httpx.get(f"{api}/deployments/name/{name}")
    return dict(r.json()) if r.status_code == 200 else None


def _runs(api: str, deployment_id: str) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {}, "deployments": {"id": {"any_": [deployment_id]}}},
    )
    r.raise_for_status()
    return [{"id": x["id"], "name": x["name"], "state_type": x["state_type"]} for x in r.json()]
