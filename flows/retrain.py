"""The retrain flow and the closed loop's Prefect objects: Prefect wiring only.

    drift alert (monitor) -> the store decides: retrain or suppressed (cooldown, cap)
      -> event mlops.drift.detected, resource labelled mlops.decision=retrain|suppressed
      -> automation "mlops-retrain-on-drift" (matches decision=retrain; within = cooldown)
      -> deployment mlops-retrain/retrain (concurrency 1, a new run is cancelled while one runs)
      -> retrain: newest validated data -> train -> gate -> compress -> package -> rollout
         (progressive canary, automatic rollback; when servers answer traffic)

`mlops worker` serves the deployments; `mlops automations install` registers the trigger;
`mlops schedule retrain --cron ...|--every ...` puts the deployment on a schedule
(flows/schedules.py; `mlops schedule list` tells whether it fires).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.lifecycle import compress_task, deploy_task, train_task
from flows.schedules import ScheduleSpec
from mlops.params import load_params
from mlops.store import Store
from mlops.workspace import open_workspace

RETRAIN_DEPLOYMENT = "retrain"
MONITOR_DEPLOYMENT = "monitor"
AUTOMATION = "mlops-retrain-on-drift"


@flow(name="mlops-retrain", log_prints=True)
def retrain(
    workspace: str = ".",
    dataset: str | None = None,
    drift_event: int | str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Retrain `dataset` on its newest validated data, gate, compress, package and roll out the
    result. A run started by a drift alert (`drift_event`, its id) claims it in the store, so
    every alert traces to its run. With no data since the last training, nothing is retrained.
    `overrides` (section.key=value) apply to this run, as `mlops run --set` does."""
    from prefect.runtime import flow_run

    from flows.lifecycle import PIPELINE_SECTIONS
    from pipelines.datasets import resolve_dataset

    ws = open_workspace(workspace)
    overrides = list(overrides or [])
    params = load_params(ws.params_path, overrides)
    log = get_run_logger()
    with Store.open(ws.database_url) as store:
        name = resolve_dataset(store, dataset or None)
        # The automation renders the event's id into the parameters (Prefect makes "7" an int).
        text = str(drift_event).strip() if drift_event is not None else ""
        event_id = int(text) if text.isdigit() else None
        claimed = store.claim_drift_event(name, str(flow_run.id or "local"), event_id=event_id)
        known = {m.id for m in store.list_models(name)}
    if claimed is not None:
        log.info("started by drift event %s (report %s)", claimed.id, claimed.drift_report_id)
    root = str(ws.root)
    steps: dict[str, Any] = {"trigger": {"drift_event": claimed.id if claimed else None}}
    # Never the cached result of an earlier run: this run's whole point is the newest data.
    pipeline_overrides = [o for o in overrides if o.split(".", 1)[0] in PIPELINE_SECTIONS]
    steps["train"] = train_task.with_options(refresh_cache=True)(root, pipeline_overrides, name)
    with Store.open(ws.database_url) as store:
        trained = store.get_model(steps["train"]["model"])
    steps["train"]["stage"] = trained.stage
    if trained.id in known:  # DVC found nothing changed: the version is the one there was
        steps["train"]["skipped"] = f"no new data since {trained.ref}: nothing to retrain"
    elif steps["train"]["stage"] in ("staging", "production"):
        steps["compress"] = compress_task(root, params, steps["train"]["model"])
        child = steps["compress"]
        usable = child.get("stage") in ("staging", "production")
        staged = child["model"] if usable else steps["train"]["model"]
        steps["package"] = deploy_task(root, params.serve, staged)
        if params.rollout.auto and "next" in steps["package"]:  # a staged version, not the first
            steps["rollout"] = _rollout_if_serving(root, name, staged, overrides)
    create_markdown_artifact(
        key="retrain-summary",
        markdown=_markdown(name, steps),
        description=f"What the retrain of {name} did",
    )
    return steps


def _rollout_if_serving(root: str, name: str, ref: str, overrides: list[str]) -> dict[str, Any]:
    """Roll `ref` out when servers answer traffic now (rows in the prediction log within the
    last minute); otherwise leave it staged for `mlops rollout REF --progressive`."""
    from flows.rollout import rollout_task
    from pipelines.rollout import live_traffic

    ws = open_workspace(root)
    if not live_traffic(ws, name):
        return {"skipped": f"no live traffic: `mlops rollout {ref} --progressive` when serving"}
    return rollout_task(root, ref, overrides)


def _markdown(name: str, steps: dict[str, Any]) -> str:
    lines = [f"## Retrain of {name}", "", "| step | result |", "|---|---|"]
    for step, value in steps.items():
        lines.append(f"| {step} | {', '.join(f'{k}={v}' for k, v in value.items())} |")
    return "\n".join(lines)


def deployments(
    root: Path, cooldown_s: float, *, schedules: dict[str, ScheduleSpec] | None = None
) -> list[Any]:
    """The loop's deployments for the workspace at `root`: retrain (at most one run at a time;
    a run asked for while one runs is cancelled) and monitor, each on its schedule (a cron line
    or an interval) when `schedules` (from params.yaml `loop:`) gives one."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.monitor import monitor_flow

    schedules = schedules or {}
    one = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)

    def when(what: str) -> dict[str, Any]:
        spec = schedules.get(what)
        if spec is None or not spec.on:
            return {}
        return {"cron": spec.cron} if spec.cron else {"interval": spec.every_s}

    return [
        retrain.to_deployment(
            name=RETRAIN_DEPLOYMENT,
            parameters={"workspace": str(root)},
            concurrency_limit=one,
            description=f"Retrain on drift or on a schedule (cooldown {cooldown_s:g} s)",
            **when(RETRAIN_DEPLOYMENT),
        ),
        monitor_flow.to_deployment(
            name=MONITOR_DEPLOYMENT,
            parameters={"workspace": str(root)},
            concurrency_limit=one,
            description="Monitor served traffic (the window: monitor.window_rows)",
            **when(MONITOR_DEPLOYMENT),
        ),
    ]


def deployment_names() -> dict[str, str]:
    """retrain/monitor -> the "flow/deployment" name the server knows each by."""
    from flows.monitor import monitor_flow

    return {
        RETRAIN_DEPLOYMENT: f"{retrain.name}/{RETRAIN_DEPLOYMENT}",
        MONITOR_DEPLOYMENT: f"{monitor_flow.name}/{MONITOR_DEPLOYMENT}",
    }
