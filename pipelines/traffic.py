"""Traffic for the lifecycle demo: what `mlops run` sends to the service before it monitors.

On the built-in source, a fresh ai4i batch with the `monitor.demo_drift` scenario (the monitor
should flag what the scenario moved); on a user's data set, a sample of its newest batch as it
is (a user's rows carry no drift knob).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mlops.params import Params
from mlops.settings import Workspace
from mlops.store import Store
from pipelines.datasets import newest_batch
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


@dataclass(frozen=True)
class DemoMonitor:
    result: MonitorResult | None
    sent: int = 0
    skipped: str = ""


def demo_monitor(ws: Workspace, store: Store, params: Params, name: str) -> DemoMonitor:
    """Serve `name`'s production version, send it the demo traffic, stop the server (which
    flushes its prediction log) and monitor exactly that window. Skipped when this production
    version already has a drift report: a re-run changes nothing."""
    import json

    from pipelines.gate import model_dir
    from pipelines.sources import DatasetSpec
    from serving.smoke import records_of, running_service, send_records

    production = store.production_model(name)
    if production is None:
        return DemoMonitor(None, skipped="no production version")
    done = [r for r in store.list_drift_reports(name) if r.model_version_id == production.id]
    if done:
        return DemoMonitor(None, skipped=f"{production.ref} already has drift report {done[-1].id}")
    spec = DatasetSpec.from_dict(json.loads((model_dir(ws, production) / "spec.json").read_text()))
    records = records_of(demo_traffic(ws, store, params, name), list(spec.features))
    with running_service(ws, name, log_name="serve-demo") as url:
        send_records(url, records)
    return DemoMonitor(monitor(ws, store, params, name=name, last=len(records)), sent=len(records))
