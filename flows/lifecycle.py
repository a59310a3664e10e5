"""The lifecycle flow: Prefect wiring only. Each task calls one plain function in `pipelines/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mlops.params import Params, load_params
from mlops.settings import Workspace
from mlops.store import Store
from mlops.workspace import open_workspace


@dataclass(frozen=True)
class LifecycleResult:
    batch_id: str
    dvc_md5: str
    created: bool
    steps: dict[str, Any]


@task(name="ingest", retries=0)
def ingest_task(ws: Workspace, params: Params) -> dict[str, Any]:
    from pipelines.ingest import ingest, load_source

    p = params.ingest
    loaded = load_source(ws, p.source, rows=p.rows, seed=p.seed, drift=p.drift)
    store = Store.open(ws.database_url)
    try:
        result = ingest(ws, store, loaded)
    finally:
        store.close()
    b = result.batch
    get_run_logger().info("batch %s (%d rows), dvc md5 %s", b.id, b.rows, b.dvc_md5)
    return {"batch_id": b.id, "dvc_md5": b.dvc_md5, "rows": b.rows, "created": result.created}


@flow(name="mlops-lifecycle", log_prints=True)
def lifecycle(workspace: str = ".", overrides: list[str] | None = None) -> LifecycleResult:
    """Ingest -> validate -> train -> evaluate -> compress, on one workspace."""
    ws = open_workspace(workspace)
    params = load_params(ws.params_path, overrides or [])
    ingested = ingest_task(ws, params)
    steps: dict[str, Any] = {"ingest": ingested}
    create_markdown_artifact(
        key="lifecycle-summary",
        markdown=_summary_markdown(steps),
        description="What the last lifecycle run did",
    )
    return LifecycleResult(ingested["batch_id"], ingested["dvc_md5"], ingested["created"], steps)


def _summary_markdown(steps: dict[str, Any]) -> str:
    lines = ["| step | result |", "|---|---|"]
    for name, value in steps.items():
        text = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
        lines.append(f"| {name} | {text} |")
    return "\n".join(lines)


def run_lifecycle(ws_root: Path, overrides: list[str] | None = None) -> LifecycleResult:
    """Run the flow (an ephemeral Prefect server starts when PREFECT_API_URL is unset)."""
    return lifecycle(workspace=str(ws_root), overrides=overrides or [])
