"""Registry: register a trained model version and gate it; `train_and_register` is the whole
path (select batches, `dvc repro`, register, gate) that `mlops train` and the flow call.

Every trained model becomes a version in stage `candidate`; the gate (`pipelines/gate.py`)
then moves it to `staging` or `rejected`, or leaves it a candidate when the evidence is too
thin, with the numbers that decided. Production is a person's decision: `mlops models promote`.
Selection lives in `pipelines/selection.py`, the DVC pipeline in `pipelines/pipeline.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from mlops.params import Params, load_params, parse_overrides
from mlops.settings import Workspace
from mlops.store import BatchRecord, ModelRecord, Store
from mlops.workspace import ensure_pipeline
from pipelines.datasets import resolve_dataset
from pipelines.evaluate import load_report
from pipelines.gate import NUMBERS, gate
from pipelines.pipeline import (
    LOCK_TIMEOUT_S,
    Artifacts,
    Echo,
    dvc_lock_info,
    git_commit,
    run_repro,
    write_overrides,
)
from pipelines.search import ScoreMany, SearchResult, run_search, winner_overrides
from pipelines.selection import check_batches_finite, select_batches, write_selection
from pipelines.sources import DatasetSpec
from pipelines.train import resolve_device

# -- registration and the gate --------------------------------------------------------------


def register_candidate(
    ws: Workspace,
    store: Store,
    *,
    artifacts: Artifacts,
    params: Params,
    batches: list[BatchRecord],
    run_id: int | None = None,
    name: str | None = None,
    extra_lineage: dict[str, Any] | None = None,
) -> ModelRecord:
    """Copy the model and its prepared splits under the models folder; register a candidate."""
    report = load_report(artifacts.metrics)
    info = json.loads(artifacts.train_info.read_text()) if artifacts.train_info.is_file() else {}
    spec = json.loads((artifacts.prepared / "spec.json").read_text())
    name = name or spec["name"]
    dest = ws.models_dir / name / (f"run-{run_id}" if run_id is not None else f"t{time.time_ns()}")
    if dest.exists():
        shutil.rmtree(dest)
    try:
        shutil.copytree(artifacts.model, dest / "model")
        shutil.copytree(artifacts.prepared, dest / "prepared")
        reports = dest / "reports"
        reports.mkdir()
        for f in (artifacts.metrics, artifacts.train_info, artifacts.train_curve_png):
            if f.is_file():
                shutil.copy2(f, reports / f.name)
        if artifacts.plots.is_dir():
            shutil.copytree(artifacts.plots, reports / "plots")

        validations = {}
        for b in batches:
            v = store.latest_validation(b.id)
            validations[b.id] = (
                {"id": v.id, "suite": v.suite, "outcome": v.outcome, "success": v.success}
                if v
                else None
            )
        lineage = {
            "batches": [
                {
                    "id": b.id,
                    "dvc_md5": b.dvc_md5,
                    "path": b.path,
                    "rows": b.rows,
                    "validation": validations[b.id],
                }
                for b in batches
            ],
            "params": {
                "prepare": params.prepare.model_dump(mode="json"),
                "train": params.train.model_dump(mode="json"),
                "evaluate": params.evaluate.model_dump(mode="json"),
            },
            "git": git_commit(ws.root),
            **dvc_lock_info(ws),
            "device": info.get("device"),
            "duration_s": info.get("duration_s"),
            "best_epoch": info.get("best_epoch"),
            "rows": report.get("rows", {}),
            "test_split_md5": _md5(dest / "prepared" / "test.parquet"),
            **(extra_lineage or {}),
        }
        metrics = {
            **report["model"],
            "task": report["task"],
            "primary_metric": report["primary_metric"],
            "higher_is_better": report["higher_is_better"],
            "baseline": report["baseline"],
            "trivial": report.get("trivial", {}),
        }
        return store.register_model(
            name=name,
            dataset=spec["name"],
            path=ws.home_relative(dest),
            runtime="torch",
            metrics=metrics,
            lineage=lineage,
            batch_ids=[b.id for b in batches],
            run_id=run_id,
            method={
                "kind": "train",
                # The same network class either way; without hidden layers it is linear.
                "model": "mlp" if params.train.hidden else "linear",
                "hidden": list(params.train.hidden),
            },
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


# -- the whole path -------------------------------------------------------------------------


def train_and_register(
    ws: Workspace,
    store: Store,
    overrides: list[str],
    *,
    dataset: str | None = None,
    device: str | None = None,
    echo: Echo | None = None,
    score_many: ScoreMany | None = None,
) -> ModelRecord:
    """Select batches, write params and selection, search, `dvc repro`, register, gate.

    Trains on `dataset`, else the one `--set prepare.dataset=` names, else the workspace's
    data set (`resolve_dataset`); the choice is written to params.yaml (prepare.dataset) so
    `dvc repro` and the lineage record it. Bad parameters, no trainable batch, non-finite
    inputs or a failing stage raise MlopsError with nothing registered or rewritten. With
    nothing changed since the last run, DVC runs nothing and the version already registered
    for this exact dvc.lock is returned.

    With `train.search` candidates, each is trained and scored on the validation split first
    (`pipelines/search.py`; by `score_many`, one after another by default); the winner's values
    are written to params.yaml, so `dvc repro` trains it and dvc.lock records it, and every
    candidate's score goes into the version's lineage as `search`.
    """
    say = echo or (lambda _msg: None)
    # Parsed once: the same values are validated now and written to params.yaml later.
    parsed = parse_overrides([*overrides, *([f"train.device={device}"] if device else [])])
    requested = dataset or parsed.get("prepare", {}).get("dataset")
    dataset = resolve_dataset(store, str(requested) if requested is not None else None)
    parsed.setdefault("prepare", {})["dataset"] = dataset
    params = load_params(ws.params_path, parsed)  # validated before anything is written
    resolve_device(params.train.device)  # `cuda` without one fails here, not after `prepare`
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ws.locks_dir / "train.lock"), timeout=LOCK_TIMEOUT_S):
        batches = select_batches(store, dataset)
        spec = store.get_dataset_spec(dataset)
        check_batches_finite(ws, DatasetSpec.from_dict(spec), batches)
        say(f"training on {len(batches)} batch(es): {', '.join(b.id for b in batches)}")
        ensure_pipeline(ws)
        write_overrides(ws, parsed)
        write_selection(ws, spec, batches)
        run = store.start_run(
            dataset=dataset,
            params=params.model_dump(mode="json", by_alias=True),
            batch_ids=[b.id for b in batches],
            git_commit=git_commit(ws.root)["commit"],
        )
        started = time.perf_counter()
        try:
            found: SearchResult | None = None
            if params.train.search:
                found = run_search(
                    ws, Artifacts(ws.root).selection, params, score_many=score_many, echo=say
                )
                say(f"search: chose candidate {found.winner + 1} ({_brief(found)})")
                write_overrides(ws, winner_overrides(found))
                params = load_params(ws.params_path)  # the file now holds the winner
            run_repro(ws, echo)
            lock = dvc_lock_info(ws)
            same = [
                m
                for m in store.list_models(name=dataset)
                if m.method.get("kind") == "train"
                and _identity(m.lineage.get("outs", {})) == _identity(lock["outs"])
            ]
            if same:
                say(f"nothing changed: already registered as {same[-1].ref}")
                store.finish_run(
                    run.id,
                    status="unchanged",
                    metrics=_run_metrics(same[-1], found),
                    duration_s=time.perf_counter() - started,
                    dvc_lock_hash=lock["dvc_lock_hash"],
                )
                if found is not None:  # this run's search, shown even though nothing is new
                    lineage = {**same[-1].lineage, "search": found.to_dict()}
                    return dataclasses.replace(same[-1], lineage=lineage)
                return same[-1]
            record = register_candidate(
                ws,
                store,
                artifacts=Artifacts(ws.root),
                params=params,
                batches=batches,
                run_id=run.id,
                extra_lineage={"search": found.to_dict()} if found else None,
            )
            record = gate(ws, store, record, params.evaluate)
            store.finish_run(
                run.id,
                status="succeeded",
                metrics=_run_metrics(record, found),
                device=record.lineage.get("device"),
                duration_s=time.perf_counter() - started,
                dvc_lock_hash=lock["dvc_lock_hash"],
            )
            return record
        except BaseException as exc:
            store.finish_run(
                run.id,
                status="failed",
                error=str(exc)[:1000],
                duration_s=time.perf_counter() - started,
            )
            raise


def _brief(found: SearchResult) -> str:
    score = found.scores[found.winner].value
    shown = f"{score:.4f}" if score is not None else "undefined"
    return f"val {found.metric} {shown} of {len(found.candidates)} candidates"


def _identity(outs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Data, weights and metrics of a pipeline run (train_info's duration is not identity)."""
    keep = ("artifacts/prepared", "artifacts/model", "artifacts/metrics.json")
    return {path: md5 for stage in outs.values() for path, md5 in stage.items() if path in keep}


def _run_metrics(record: ModelRecord, found: SearchResult | None = None) -> dict[str, Any]:
    return {
        "model": record.ref,
        **{k: record.metrics.get(k) for k in NUMBERS if k in record.metrics},
        **({"search": found.table()} if found else {}),
    }
