"""Helpers for the serving tests, and their session fixture `served` (see conftest.py):
one real `mlops serve` (BentoML, 2 workers) on a workspace with three versions of ai4i:

- `good`: trained on the true labels, production at the start of every test;
- `noise`: trained on permuted labels (so it disagrees with `good` often), staged by override;
- `spare`: another good one, for the corrupt-file test.

Tests change the deployment state through the store, as the CLI does, and put it back with
`served.reset()`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlops.params import Params
from mlops.settings import Workspace
from mlops.store import BatchRecord, ModelRecord, Store

TOKEN = "test-admin-token"
POLL_S = 0.5
PARAMS = Params.model_validate(
    {"train": {"epochs": 6, "hidden": [32, 32], "device": "cpu", "patience": 6}}
)


@dataclass
class Served:
    ws: Workspace
    url: str
    env: dict[str, str]
    good: ModelRecord
    noise: ModelRecord
    spare: ModelRecord
    proc: subprocess.Popen[bytes]
    log: Path
    sample: list[dict[str, Any]]  # real rows of the data set, as a client would send them
    before_promotion: dict[str, int]  # /livez, /readyz, /predict while nothing was in production
    unready_error: str  # /predict's error then

    def store(self) -> Store:
        return Store.open(self.ws.database_url)

    def reset(self) -> None:
        """`good` in production, the others staged, no canary, no shadow; wait until every
        worker serves `good`."""
        with self.store() as store:
            state = store.deployment_state("ai4i")
            if state and state.canary_version_id:
                store.clear_deployment("ai4i", "canary", actor="test")
            if state and state.shadow_version_id:
                store.clear_deployment("ai4i", "shadow", actor="test")
            if store.get_model(self.good.id).stage != "production":
                store.set_stage(self.good.id, "production", action="override", reason="test reset")
            for other in (self.noise, self.spare):  # staged again, ready for the next test
                if store.get_model(other.id).stage != "staging":
                    store.set_stage(other.id, "staging", action="override", reason="test reset")
        wait_for(lambda: versions_seen(self, 40) == {self.good.ref}, what="good on every worker")

    def predict(self, records: list[dict[str, Any]], **headers: str) -> httpx.Response:
        return httpx.post(f"{self.url}/predict", json={"records": records}, headers=headers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, *, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def versions_seen(served: Served, n: int) -> set[str]:
    """Which versions answer n fresh connections (so both workers are asked)."""
    seen = set()
    for _ in range(n):
        r = httpx.post(
            f"{served.url}/predict",
            json={"records": served.sample[:1]},
            headers={"Connection": "close"},
        )
        r.raise_for_status()
        seen.add(r.json()["version"])
    return seen


def _batch(ws: Workspace, store: Store, rows: int, seed: int) -> tuple[BatchRecord, Any]:
    from pipelines.ingest import ingest, load_source

    loaded = load_source(ws, "ai4i", rows=rows, seed=seed)
    batch = ingest(ws, store, loaded).batch
    store.add_validation(
        batch_id=batch.id, suite="test", success=True, policy="block", outcome="passed",
        evaluated=0, failures=[], docs_path=None,
    )  # fmt: skip
    return batch, loaded.frame


def _train(ws: Workspace, store: Store, data: Any, batch: BatchRecord, where: Path, *,
           shuffle: int | None = None, seed: int = 0) -> ModelRecord:  # fmt: skip
    from pipelines.evaluate import run_evaluate_stage
    from pipelines.pipeline import Artifacts
    from pipelines.prepare import save_prepared
    from pipelines.registry import register_candidate
    from pipelines.train import run_train_stage

    art = Artifacts(where)
    save_prepared(data, art.prepared)
    train_on = data
    if shuffle is not None:
        target = data.spec.target
        noise = np.random.default_rng(shuffle).permutation(data.train[target].to_numpy())
        train_on = replace(data, train=data.train.assign(**{target: noise}))
    params = PARAMS.model_copy(update={"train": PARAMS.train.model_copy(update={"seed": seed})})
    run_train_stage(
        train_on, params.train, model_dir=art.model, curve_csv=art.plots / "curve.csv",
        curve_png=art.train_curve_png, info_path=art.train_info, checkpoint_dir=None,
        progress=False,
    )  # fmt: skip
    run_evaluate_stage(art.prepared, art.model, art.metrics, art.plots, params.evaluate)
    return register_candidate(ws, store, artifacts=art, params=params, batches=[batch])


def start_server(
    ws: Workspace, env: dict[str, str], port: int, log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlops", "-w", str(ws.root), "serve", "--port", str(port),
         "--workers", "2"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def server_env(ws: Workspace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env.update(
        MLOPS_HOME=str(ws.home), MLOPS_DATABASE_URL=ws.database_url, MLOPS_ADMIN_TOKEN=TOKEN,
        BENTOML_HOME=str(ws.bentoml_home), BENTOML_DO_NOT_TRACK="true", DO_NOT_TRACK="1",
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )  # fmt: skip
    return env


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ruamel.yaml import YAML

    from pipelines.init import init_workspace
    from pipelines.prepare import prepare
    from pipelines.sources import AI4I_SPEC
    from serving.package import package_version

    for key in ("MLOPS_HOME", "MLOPS_DATABASE_URL", "MLOPS_WORKSPACE"):
        os.environ.pop(key, None)
    root = tmp_path_factory.mktemp("served")
    ws = init_workspace(root / "ws")
    yaml = YAML()
    params = yaml.load(ws.params_path)
    params["serve"]["poll_s"] = POLL_S
    params["serve"]["log_flush_s"] = 0.5
    yaml.dump(params, ws.params_path)
    with Store.open(ws.database_url) as store:
        batch, frame = _batch(ws, store, 3000, seed=5)
        data = prepare({batch.id: frame}, AI4I_SPEC, PARAMS.prepare)
        good = _train(ws, store, data, batch, root / "a")
        noise = _train(ws, store, data, batch, root / "b", shuffle=3)
        spare = _train(ws, store, data, batch, root / "c", seed=1)
        for m in (good, noise, spare):
            store.set_stage(m.id, "staging", action="override", reason="test setup")
            package_version(store, ws, m.id, bento=False)
        good, noise, spare = (store.get_model(m.id) for m in (good, noise, spare))
    sample = data.test.head(200)[list(AI4I_SPEC.features)]
    records = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in sample.to_dict(orient="records")
    ]
    env = server_env(ws)
    port = free_port()
    log = root / "server.log"
    proc = start_server(ws, env, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        # Up, but nothing in production yet: alive, not ready.
        wait_for(lambda: httpx.get(f"{url}/livez").status_code == 200, what="the server")
        before = {p: httpx.get(f"{url}/{p}").status_code for p in ("livez", "readyz")}
        early = httpx.post(f"{url}/predict", json={"records": records[:1]})
        before["predict"] = early.status_code
        with Store.open(ws.database_url) as store:
            store.set_stage(good.id, "production", action="promote", reason="test setup")
            good = store.get_model(good.id)
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="readiness")
        yield Served(
            ws, url, env, good, noise, spare, proc, log, records, before, early.json()["error"]
        )
    finally:
        stop_server(proc)
