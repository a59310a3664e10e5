"""The lifecycle flow: Prefect wiring only. Each task calls plain functions in `pipelines/`.

ingest -> validate -> train + evaluate (DVC stages, the promotion gate) -> compress -> package
-> deploy (the first production version only; later ones wait for a release manager) -> traffic
and monitor (the demo: a drift scenario sent to the service, then a drift report) -> when the
monitor's alert becomes a drift event the store approves: the scenario's data arrives, and the
retrain flow (flows/retrain.py) trains, gates, compresses, packages and rolls the new version
out progressively on live traffic, as the automation would start it on a Prefect server.

Fan-out is mapped tasks: the data set's batches still waiting for validation, and the
`train.search` candidates. They run on the flow's task runner: Prefect's threads by default,
Dask worker processes with `run_lifecycle(..., executor="dask")` (flows/executors.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from flows import caching
from flows.retrying import transient
from mlops.errors import ValidationFailed
from mlops.params import EvaluateParams, Params, ServeParams, TrainParams, load_params
from mlops.settings import configure_environment
from mlops.store import BatchRecord, Store
from mlops.workspace import open_workspace
from pipelines.ingest import SourceRequest

if TYPE_CHECKING:
    from pipelines.search import CandidateScore

# Stages whose parameters `dvc repro` reads: overrides for them are written to params.yaml.
PIPELINE_SECTIONS = ("prepare", "train", "evaluate")


@dataclass(frozen=True)
class LifecycleResult:
    batch_id: str
    dvc_md5: str
    steps: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    task_runner: str = ""  # where mapped tasks ran: ThreadPoolTaskRunner, DaskTaskRunner


@task(
    name="ingest",
    cache_key_fn=caching.ingest_key,
    persist_result=True,
    retry_condition_fn=transient,
    retries=2,
    retry_delay_seconds=5,
)
def ingest_task(
    root: str, params: Params, request: SourceRequest | None, dataset: str | None
) -> dict[str, Any]:
    """Ingest the request; without one, take the workspace's data set's newest batch (or, in
    an empty workspace, the params' source)."""
    from pipelines.datasets import has_data, newest_batch, resolve_dataset
    from pipelines.ingest import ingest, request_from_params

    log = get_run_logger()
    ws = open_workspace(root)
    with Store.open(ws.database_url) as store:
        if request is None and (dataset or has_data(store)):
            b = newest_batch(store, resolve_dataset(store, dataset))
            log.info("no source given: data set %s, its newest batch %s", b.dataset, b.id)
            return _batch_step(b, new=False, source="newest batch")
        loaded = (request or request_from_params(params.ingest)).load(ws, store)
        for note in loaded.notes:
            log.info(note)
        result = ingest(ws, store, loaded)
    b = result.batch
    log.info("batch %s (%d rows), dvc md5 %s", b.id, b.rows, b.dvc_md5)
    return _batch_step(b, new=result.created, source=b.source)


def _batch_step(b: BatchRecord, *, new: bool, source: str) -> dict[str, Any]:
    step = {
        "dataset": b.dataset,
        "batch_id": b.id,
        "dvc_md5": b.dvc_md5,
        "rows": b.rows,
        "new": new,
        "source": source,
    }
    if b.meta.get("unlabelled"):  # kept in the batch, left out of training: said every time
        step["unlabelled"] = b.meta["unlabelled"]
    return step


@task(name="validate", cache_key_fn=caching.validate_key, persist_result=True)
def validate_task(root: str, params: Params, batch_id: str) -> dict[str, Any]:
    from pipelines.validate import validate_batch

    ws = open_workspace(root)
    p = params.validate_
    with Store.open(ws.database_url) as store:
        report = validate_batch(
            ws, store, batch_id, policy=p.policy, min_rows=p.min_rows, max_rows=p.max_rows
        )
    if report.suite_inferred is not None:
        i = report.suite_inferred
        get_run_logger().info("inferred suite %s from batch %s", i.path, i.reference_batch)
        if i.warning:
            get_run_logger().warning(i.warning)
    if report.blocked:
        # Fails the task and so the flow run: the state message names the failures and the
        # Data Docs page to open.
        raise ValidationFailed(report.summary())
    get_run_logger().info(report.summary())
    return {
        "outcome": report.outcome,
        "failed": len(report.failures),
        "docs": str(report.docs_path or ""),
    }


@task(name="pending-batches")
def pending_batches_task(root: str, dataset: str, exclude: str) -> list[str]:
    """The data set's batches that were ingested but never validated (oldest first)."""
    ws = open_workspace(root)
    with Store.open(ws.database_url) as store:
        pending = store.list_batches(dataset=dataset, status=["ingested"])
    return [b.id for b in pending if b.id != exclude]


def _validate_pending(root: str, params: Params, batch_ids: list[str]) -> dict[str, Any]:
    """Validate batches as a mapped task (on Dask with `--executor dask`, side by side); every
    one is validated and recorded before a blocked one fails the flow."""
    from prefect import unmapped
    from prefect.futures import wait

    futures = validate_task.map(unmapped(root), unmapped(params), batch_ids)
    wait(futures)
    results = [f.result() for f in futures]  # raises the first ValidationFailed
    return {
        "batches": ", ".join(batch_ids),
        "outcomes": ", ".join(r["outcome"] for r in results),
    }


@task(name="train-candidate")
def candidate_task(
    prepared_dir: str, params: TrainParams, evaluate: EvaluateParams
) -> CandidateScore:
    """Train one `train.search` candidate; its score on the validation split."""
    from pipelines.search import score_candidate

    return score_candidate(Path(prepared_dir), params, evaluate)


def _score_on_task_runner(
    prepared_dir: Path, candidates: Sequence[TrainParams], evaluate: EvaluateParams
) -> list[CandidateScore]:
    """`train_and_register`'s scorer in a flow: one mapped task per candidate, run where the
    flow's task runner runs them (Dask worker processes side by side; threads take turns)."""
    from prefect import unmapped

    futures = candidate_task.map(unmapped(str(prepared_dir)), list(candidates), unmapped(evaluate))
    return [f.result() for f in futures]


@task(name="train-evaluate-gate", cache_key_fn=caching.train_key, persist_result=True)
def train_task(root: str, overrides: list[str], dataset: str) -> dict[str, Any]:
    from pipelines.registry import train_and_register

    ws = open_workspace(root)
    with Store.open(ws.database_url) as store:
        record = train_and_register(
            ws, store, overrides, dataset=dataset, score_many=_score_on_task_runner
        )
    decision = record.decision
    get_run_logger().info("model %s -> %s: %s", record.ref, record.stage, decision.get("reason"))
    out = {
        "model": record.ref,
        "stage": record.stage,
        "metrics": _primary(record.metrics),
        "reason": decision.get("reason", ""),
    }
    search = record.lineage.get("search")
    if search:
        table = search["table"]
        create_table_artifact(
            key="train-search",
            table=[{k: str(v) for k, v in row.items()} for row in table],
            description=f"train.search: every candidate's val {search['metric']}",
        )
        metric, won = search["metric"], table[search["winner"]]
        value = won["val_" + metric]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        out["search"] = (
            f"{len(table)} candidates, chose {search['winner']} ({won['overrides']}): "
            f"val {metric} {shown}"
        )
    return out


@task(name="compress")
def compress_task(root: str, params: Params, ref: str) -> dict[str, Any]:
    from pipelines.compress import compress_and_register

    ws = open_workspace(root)
    with Store.open(ws.database_url) as store:
        done = compress_and_register(ws, store, ref, params.compress, params.evaluate)
    child, report = done.child, done.report
    table = (
        str(report.csv_path)
        if report
        else child.lineage.get("compression_report", "")
        if child
        else ""
    )
    if child is None:
        return {"model": None, "reason": "no variant within the quality tolerance", "table": table}
    return {
        "table": table,
        "model": child.ref,
        "stage": child.stage,
        "reused": done.reused,
        "method": child.method.get("method", ""),
        "runtime": child.runtime,
        "gate": child.decision.get("reason", ""),
    }


@task(name="package-deploy", retries=2, retry_delay_seconds=5, retry_condition_fn=transient)
def deploy_task(root: str, serve: ServeParams, ref: str) -> dict[str, Any]:
    """Package the staged version; when the model has no production version yet, make it
    production and check that it serves. Later versions stay staged: promoting or
    canarying them is a release manager's call (`mlops promote`, `mlops rollout`)."""
    from pipelines.artifact import model_folder, read_manifest
    from pipelines.gate import promote
    from serving.package import package_version
    from serving.smoke import serve_check

    ws = open_workspace(root)
    configure_environment(ws)
    with Store.open(ws.database_url) as store:
        done = package_version(store, ws, ref, bento=serve.bento)
        record = done.record
        production = store.production_model(record.name)
        out: dict[str, Any] = {
            "model": record.ref,
            "bento": done.package.bento_tag,
            "reused": done.reused,
        }
        if production is not None:
            out["production"] = production.ref
            if production.id != record.id:
                out["next"] = (
                    f"mlops rollout {record.ref} --canary 10, or mlops promote {record.ref}"
                )
            return out
        promote(store, record.ref, "production", reason="first version of this model",
                actor="lifecycle")  # fmt: skip
    out["production"] = record.ref
    if not serve.check:
        return out
    schema = read_manifest(model_folder(ws.version_dir(record.path)))["schema"]
    check = serve_check(ws, record.name, schema)
    get_run_logger().info("%s is production and serves (%s)", record.ref, check.version)
    out.update(served=f"{check.records} records answered by {check.version}",
               serve_check_s=round(check.seconds, 1))  # fmt: skip
    return out


@task(name="traffic-monitor", retries=2, retry_delay_seconds=5, retry_condition_fn=transient)
def traffic_monitor_task(root: str, params: Params, name: str) -> dict[str, Any]:
    """The demo's last step: serve the production version, send it traffic (with the
    `monitor.demo_drift` scenario on the built-in source), and monitor that window. Once per
    production version: a re-run with nothing new makes no second report."""
    from pipelines.monitor import summary_markdown
    from pipelines.traffic import demo_monitor

    ws = open_workspace(root)
    configure_environment(ws)
    with Store.open(ws.database_url) as store:
        done = demo_monitor(ws, store, params, name)
    if done.result is None:
        return {"skipped": done.skipped}
    result, s = done.result, done.result.summary
    get_run_logger().info(
        "sent %d records to the service; drift report %s: drifted %s",
        done.sent, result.report.id, ", ".join(s["drifted"]) or "none",
    )  # fmt: skip
    create_markdown_artifact(key="monitor-report", markdown=summary_markdown(s, result.reasons))
    out = {
        "report": result.report.id,
        "rows": s["rows"],
        "drifted": ", ".join(s["drifted"]) or "none",
        "html": str(result.html),
        "alerts": "; ".join(result.reasons) or "none",
    }
    event = s.get("drift_event")
    if event:
        out.update(drift_event=event["id"], decision=event["decision"])
    return out


@task(name="drift-batch", retries=2, retry_delay_seconds=5, retry_condition_fn=transient)
def drift_batch_task(root: str, params: Params, name: str) -> dict[str, Any] | None:
    """The drift scenario's labelled data arrives: ingested as the data set's next batch
    (None for a user's data set, whose new batches come from the user)."""
    from pipelines.ingest import ingest
    from pipelines.traffic import drift_batch

    ws = open_workspace(root)
    with Store.open(ws.database_url) as store:
        loaded = drift_batch(ws, store, params, name)
        if loaded is None:
            return None
        result = ingest(ws, store, loaded)
    return _batch_step(result.batch, new=result.created, source=result.batch.source)


def _answer_drift(
    root: str, params: Params, name: str, event: int, overrides: list[str]
) -> dict[str, Any]:
    """The demo's drift incident, answered the way the automation answers one: the scenario's
    data arrives and is validated, then the retrain flow runs for the drift event (train ->
    gate -> compress -> package -> progressive rollout) while a client keeps the production
    version busy, so the canary is judged on live traffic."""
    from flows.retrain import retrain
    from pipelines.traffic import demo_client

    steps: dict[str, Any] = {}
    new = drift_batch_task(root, params, name)
    if new is not None:
        steps["drift-data"] = new
        steps["drift-validate"] = validate_task(root, params, new["batch_id"])
    summary: dict[str, Any] = {"drift_event": event}
    if new is None:  # a user's data set: no new batch yet, so the retrain says so and stops
        done = retrain(workspace=root, dataset=name, drift_event=event, overrides=overrides)
    else:
        with demo_client(open_workspace(root), params, name) as client:
            done = retrain(workspace=root, dataset=name, drift_event=event, overrides=overrides)
        summary["traffic"] = client.summary()
    summary.update(_retrain_line(done))
    steps["retrain"] = summary
    return steps


def _retrain_line(done: dict[str, Any]) -> dict[str, Any]:
    """The retrain flow's steps, one entry each, for the lifecycle's table."""
    out: dict[str, Any] = {}
    train = done.get("train", {})
    out["model"] = f"{train.get('model')} ({train.get('stage')})"
    if train.get("skipped"):
        out["skipped"] = train["skipped"]
        return out
    out["gate"] = train.get("reason", "")
    if "compress" in done:
        out["compressed"] = done["compress"].get("model") or done["compress"].get("reason")
    rollout = done.get("rollout")
    if rollout:
        out["rollout"] = (
            f"{rollout.get('candidate')} {rollout['outcome']}: {rollout.get('reason')}"
            if "outcome" in rollout
            else rollout.get("skipped", "")
        )
    return out


def _stage_now(ws: Any, ref: str) -> str:
    with Store.open(ws.database_url) as store:
        return store.get_model(ref).stage


def _primary(metrics: dict[str, Any]) -> str:
    name = metrics.get("primary_metric")
    value = metrics.get(name) if isinstance(name, str) else None
    if value is None and isinstance(metrics.get("test"), dict) and isinstance(name, str):
        value = metrics["test"].get(name)
    return f"{name}={value:.4f}" if isinstance(value, float) else str(name)


@flow(name="mlops-lifecycle", log_prints=True)
def lifecycle(
    workspace: str = ".",
    overrides: list[str] | None = None,
    request: SourceRequest | None = None,
    dataset: str | None = None,
) -> LifecycleResult:
    """Ingest -> validate -> train/evaluate/gate -> compress -> package/deploy -> traffic and
    monitor, on one workspace.

    `request` says what to ingest; without one (and no `ingest.*` override) the run retrains
    on the workspace's data set (`dataset` when there are several), from its newest batch.
    """
    from pipelines.ingest import plan_request

    ws = open_workspace(workspace)
    overrides = list(overrides or [])
    params = load_params(ws.params_path, overrides)
    steps: dict[str, Any] = {}

    # Tasks get the workspace's folder, never the Workspace: it carries the database URL,
    # and task parameters are recorded by Prefect.
    root = str(ws.root)
    ingested = ingest_task(
        root, params, plan_request(params.ingest, overrides, request), dataset, return_state=True
    )
    steps["ingest"] = dict(ingested.result())
    if ingested.name == "Cached":  # an earlier run ingested it: nothing new in this one
        steps["ingest"]["new"] = False
    batch_id = steps["ingest"]["batch_id"]
    # This batch first: a new data set's first validation infers its suite, once.
    steps["validate"] = validate_task(root, params, batch_id)
    pending = pending_batches_task(root, steps["ingest"]["dataset"], batch_id)
    if pending:
        steps["validate-pending"] = _validate_pending(root, params, pending)
    pipeline_overrides = [o for o in overrides if o.split(".", 1)[0] in PIPELINE_SECTIONS]
    steps["train"] = train_task(root, pipeline_overrides, steps["ingest"]["dataset"])
    # A cached train step (a re-run after a failure) reports the stage it had then.
    steps["train"]["stage"] = _stage_now(ws, steps["train"]["model"])
    if steps["train"]["stage"] in ("staging", "production"):
        steps["compress"] = compress_task(root, params, steps["train"]["model"])
        child = steps["compress"]
        usable = child.get("stage") in ("staging", "production")
        staged = child["model"] if usable else steps["train"]["model"]
        steps["deploy"] = deploy_task(root, params.serve, staged)
        if params.monitor.demo_rows and params.serve.check:
            name = steps["ingest"]["dataset"]
            steps["monitor"] = traffic_monitor_task(root, params, name)
            if steps["monitor"].get("decision") == "retrain":  # the store approved a retrain
                event = steps["monitor"]["drift_event"]
                steps.update(_answer_drift(root, params, name, event, overrides))
    else:
        steps["compress"] = {"model": None, "reason": "candidate was not promoted"}

    create_table_artifact(
        key="lifecycle-steps",
        table=[{"step": k, **{kk: str(vv) for kk, vv in v.items()}} for k, v in steps.items()],
        description="What the last lifecycle run did",
    )
    create_markdown_artifact(key="lifecycle-summary", markdown=_summary_markdown(steps))
    runner = getattr(FlowRunContext.get(), "task_runner", None)
    return LifecycleResult(
        batch_id,
        steps["ingest"]["dvc_md5"],
        steps,
        steps["ingest"]["dataset"],
        task_runner=type(runner).__name__,
    )


def _summary_markdown(steps: dict[str, Any]) -> str:
    lines = ["| step | result |", "|---|---|"]
    for name, value in steps.items():
        lines.append(f"| {name} | {', '.join(f'{k}={v}' for k, v in value.items())} |")
    return "\n".join(lines)


def run_lifecycle(
    ws_root: Path,
    overrides: list[str] | None = None,
    *,
    request: SourceRequest | None = None,
    dataset: str | None = None,
    executor: str | None = None,
) -> LifecycleResult:
    """Run the flow (an ephemeral Prefect server starts when PREFECT_API_URL is unset).

    `executor` says where mapped tasks (pending batches' validations, search candidates) run:
    None or "default" (Prefect's threads), "dask" or "dask=tcp://HOST:PORT" (flows/executors.py).
    """
    from flows.executors import Executor, api_for_workers

    chosen = Executor.parse(executor)
    runner = chosen.task_runner()
    run = lifecycle if runner is None else lifecycle.with_options(task_runner=runner)
    with api_for_workers(chosen):
        return run(
            workspace=str(ws_root), overrides=overrides or [], request=request, dataset=dataset
        )
