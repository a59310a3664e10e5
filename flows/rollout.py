"""The rollout flow: progressive delivery of a staged version. Prefect wiring only; the steps
and the comparison are `pipelines.rollout`."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from mlops.params import load_params
from mlops.store import Store
from mlops.workspace import open_workspace


@task(name="progressive-rollout")
def rollout_task(root: str, ref: str, overrides: list[str] | None = None) -> dict[str, Any]:
    from pipelines.rollout import progressive_rollout

    ws = open_workspace(root)
    params = load_params(ws.params_path, list(overrides or []))
    log = get_run_logger()
    with Store.open(ws.database_url) as store:
        result = progressive_rollout(ws, store, params, ref, say=log.info)
    create_table_artifact(
        key="rollout-steps",
        table=[{k: str(v) for k, v in s.to_dict().items()} for s in result.steps],
        description=f"{result.candidate}: {result.outcome} ({result.reason})",
    )
    return {"candidate": result.candidate, "outcome": result.outcome, "reason": result.reason}


@flow(name="mlops-rollout", log_prints=True)
def rollout_flow(workspace: str = ".", ref: str = "") -> dict[str, Any]:
    """Canary `ref` step by step (rollout.steps), compare it with production at each step,
    promote it or roll it back automatically."""
    return rollout_task(workspace, ref)
