"""Traffic for the lifecycle demo: what `mlops run` sends to the service, and the drift
scenario's new data.

On the built-in source, a fresh ai4i batch with the `monitor.demo_drift` scenario (the monitor
should flag what the scenario moved); on a user's data set, a sample of its newest batch as it
is (a user's rows carry no drift knob).

The demo closes the loop once per data set: the monitor's alert becomes a drift event, the
scenario's labelled data arrives as a new batch (`drift_batch`), and the retrain's rollout is
judged on traffic that `DemoClient` keeps sending to a served production version.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlops.errors import MlopsError
from mlops.params import Params
from mlops.settings import Workspace
from mlops.store import Store
from pipelines.datasets import newest_batch
from pipelines.ingest import LoadedSource
from pipelines.monitor import MonitorResult, monitor


def demo_traffic(ws: Workspace, store: Store, params: Params, name: str) -> pd.DataFrame:
    """`params.monitor.demo_rows` rows for model `name`'s service."""
    from pipelines.sources import AI4I_SPEC, generate_ai4i, parse_drift
    from pipelines.validate import load_frame

    n = params.monitor.demo_rows
    if name == AI4I_SPEC.name:
        # Another seed than the training batch's: new machines, the same process.
        return generate_ai4i(n, params.ingest.seed + 1, parse_drift(params.monitor.demo_drift))
    frame = load_frame(ws, store, newest_batch(store, name))
    return frame.sample(n=min(n, len(frame)), random_state=params.monitor.seed)


def drift_batch(ws: Workspace, store: Store, params: Params, name: str) -> LoadedSource | None:
    """The drift scenario's labelled data, as the next period's batch arrives: on the built-in
    source, `ingest.rows` rows with `monitor.demo_drift` (a seed of their own, so the same
    batch every time: ingesting it again creates nothing). None for a user's data set: its new
    batches come from the user (`mlops ingest`)."""
    from pipelines.ingest import load_source
    from pipelines.sources import AI4I_SPEC

    if name != AI4I_SPEC.name:
        return None
    return load_source(
        ws,
        "ai4i",
        store=store,
        rows=params.ingest.rows,
        seed=params.ingest.seed + 2,
        drift=params.monitor.demo_drift,
    )


@dataclass(frozen=True)
class DemoMonitor:
    result: MonitorResult | None
    sent: int = 0
    skipped: str = ""


def demo_monitor(ws: Workspace, store: Store, params: Params, name: str) -> DemoMonitor:
    """Serve `name`'s production version, send it the demo traffic, stop the server (which
    flushes its prediction log) and monitor exactly that window. Once per data set: when it
    has a drift report, a re-run changes nothing (`mlops monitor` monitors any time)."""
    from serving.smoke import records_of, running_service, send_records

    production = store.production_model(name)
    if production is None:
        return DemoMonitor(None, skipped="no production version")
    done = store.list_drift_reports(name)
    if done:
        return DemoMonitor(None, skipped=f"{name} already has drift report {done[-1].id}")
    records = records_of(demo_traffic(ws, store, params, name), served_features(ws, store, name))
    with running_service(ws, name, log_name="serve-demo") as url:
        send_records(url, records)
    return DemoMonitor(monitor(ws, store, params, name=name, last=len(records)), sent=len(records))


def served_features(ws: Workspace, store: Store, name: str) -> list[str]:
    """The input columns of `name`'s production version."""
    import json

    from pipelines.gate import model_dir
    from pipelines.sources import DatasetSpec

    production = store.production_model(name)
    if production is None:
        raise MlopsError(f"{name} has no production version")
    spec = DatasetSpec.from_dict(json.loads((model_dir(ws, production) / "spec.json").read_text()))
    return list(spec.features)


@dataclass
class DemoClient:
    """A client of the demo's service: 10-record requests of the demo traffic, one every
    `idle_s`, and back to back while the store shows a canary, so that a rollout's steps
    (`rollout.min_requests` canary requests each) take seconds, not minutes. Every status it
    got is counted."""

    url: str
    records: list[dict[str, Any]]
    canary_live: Callable[[], bool]
    idle_s: float = 0.2
    per_request: int = 10
    statuses: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import httpx

        i, checked, live = 0, 0.0, False
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                if time.monotonic() - checked > 0.5:
                    live, checked = bool(self.canary_live()), time.monotonic()
                rows = [self.records[(i + k) % len(self.records)] for k in range(self.per_request)]
                i += self.per_request
                try:
                    r = client.post(
                        "/predict",
                        json={"records": rows},
                        headers={"X-Request-ID": uuid.uuid4().hex},
                    )
                    self.statuses[r.status_code] += 1
                except httpx.HTTPError:
                    self.statuses[0] += 1  # no answer at all
                if not live:
                    self._stop.wait(self.idle_s)

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> str:
        sent = sum(self.statuses.values())
        failed = sent - self.statuses.get(200, 0)
        return f"{sent} requests, {failed} failed"


@contextmanager
def demo_client(ws: Workspace, params: Params, name: str) -> Iterator[DemoClient]:
    """Serve `name` (production, and a canary when the store sets one) with a `DemoClient`
    sending it the demo traffic until the block ends; the server stops after it (flushing its
    prediction log)."""
    from serving.smoke import records_of, running_service

    with Store.open(ws.database_url) as store:
        records = records_of(
            demo_traffic(ws, store, params, name), served_features(ws, store, name)
        )

    with running_service(ws, name, log_name="serve-rollout") as url:
        client = DemoClient(url, records, lambda: False)

        def drive() -> None:  # the client's own store connection, in its thread
            with Store.open(ws.database_url) as store:

                def canary_live() -> bool:
                    state = store.deployment_state(name)
                    return state is not None and state.canary_version_id is not None

                client.canary_live = canary_live
                client.run()

        thread = threading.Thread(target=drive, name="demo-client", daemon=True)
        thread.start()
        try:
            yield client
        finally:
            client.stop()
            thread.join(timeout=60)
