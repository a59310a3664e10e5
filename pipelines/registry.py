"""Registry: pick the batches, run the DVC pipeline, register the model version, gate it.

`train_and_register` is what `mlops train` and the Prefect flow call. Every trained model becomes
a version in stage `candidate`; the gate (`pipelines/gate.py`) then moves it to `staging` or
`rejected`, or leaves it a candidate when the evidence is too thin, with the numbers that
decided. Production is a person's decision: `mlops models promote` makes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from mlops.errors import MlopsError
from mlops.io import atomic_write_json, atomic_write_text
from mlops.params import Params, load_params, parse_overrides
from mlops.settings import OFFLINE_ENV, Workspace
from mlops.store import BatchRecord, ModelRecord, Store
from mlops.workspace import ensure_pipeline
from pipelines.datasets import resolve_dataset
from pipelines.evaluate import load_report
from pipelines.gate import NUMBERS, gate
from pipelines.prepare import check_finite
from pipelines.sources import DatasetSpec
from pipelines.train import resolve_device

Echo = Callable[[str], None]
LOCK_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Artifacts:
    """Where the pipeline's files live in a workspace (dvc.yaml names the same paths)."""

    root: Path

    @property
    def selection(self) -> Path:
        return self.root / "data" / "selected_batches.json"

    @property
    def prepared(self) -> Path:
        return self.root / "artifacts" / "prepared"

    @property
    def model(self) -> Path:
        return self.root / "artifacts" / "model"

    @property
    def metrics(self) -> Path:
        return self.root / "artifacts" / "metrics.json"

    @property
    def train_info(self) -> Path:
        return self.root / "artifacts" / "train_info.json"

    @property
    def train_curve_png(self) -> Path:
        return self.root / "artifacts" / "train_curve.png"

    @property
    def plots(self) -> Path:
        return self.root / "artifacts" / "plots"


def checkpoint_dir(ws: Workspace) -> Path:
    # Machine state, not a DVC out: `dvc repro` deletes outs before a stage runs.
    return ws.home / "checkpoints"


# -- selection ------------------------------------------------------------------------------


def select_batches(store: Store, dataset: str) -> list[BatchRecord]:
    """The data set's trainable batches (latest validation passed or warned); else an error."""
    batches = store.trainable_batches(dataset)
    if not batches:
        others = store.list_batches(dataset=dataset)
        if not others:
            raise MlopsError(f"no batches of data set '{dataset}' to train on: ingest one first")
        shown = ", ".join(f"{b.id} ({b.status})" for b in others[:5])
        raise MlopsError(
            f"no validated batch of data set '{dataset}' to train on: {shown}; training takes only "
            "batches whose latest validation passed or warned (`mlops validate BATCH`)"
        )
    # Store.add_validation sets a batch's status to its latest outcome in the same transaction,
    # so this status filter is the validation module's rule (require_trainable), not a copy.
    return batches


def write_selection(ws: Workspace, spec: dict[str, Any], batches: list[BatchRecord]) -> Path:
    """data/selected_batches.json: DVC's dependency for `prepare`; same batches, same bytes."""
    path = Artifacts(ws.root).selection
    selection = {
        "dataset": spec["name"],
        "spec": spec,
        "batches": [
            {"id": b.id, "path": b.path, "md5": b.dvc_md5, "rows": b.rows}
            for b in sorted(batches, key=lambda b: b.id)
        ],
    }
    atomic_write_json(path, selection)
    return path


def write_overrides(ws: Workspace, overrides: list[str]) -> None:
    """Write `--set` values into params.yaml (comments kept), so `dvc repro` sees what ran."""
    if not overrides:
        return
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: keeps the file's comments and order
    doc = yaml.load(ws.params_path.read_text())
    changed = False
    for section, values in parse_overrides(overrides).items():
        for key, value in values.items():
            if doc.setdefault(section, {}).get(key) != value:
                doc[section][key] = value
                changed = True
    if changed:
        from io import StringIO

        buf = StringIO()
        yaml.dump(doc, buf)
        atomic_write_text(ws.params_path, buf.getvalue())


def check_batches_finite(ws: Workspace, spec: DatasetSpec, batches: list[BatchRecord]) -> None:
    """Non-finite inputs fail here, before params.yaml, dvc.lock or a model folder is touched
    (a batch validated under the `warn` policy can still carry them)."""
    for b in batches:
        path = ws.resolve(b.path)
        if path.is_file():  # a missing file is `prepare`'s to report (it names the checkout)
            check_finite(pd.read_parquet(path), spec, f"batch {b.id}")


# -- the DVC pipeline -----------------------------------------------------------------------


def run_repro(ws: Workspace, echo: Echo | None = None) -> str:
    """`dvc repro` in the workspace, its output streamed to stderr; returns the output."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **OFFLINE_ENV, "MLOPS_WORKSPACE": str(ws.root)}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the stages call `mlops`
    dvc = shutil.which("dvc", path=env["PATH"]) or "dvc"
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    # The same lock as ingestion's DVC calls: DVC fails at once on a repo another process holds.
    with FileLock(str(ws.locks_dir / "dvc.lock"), timeout=LOCK_TIMEOUT_S):
        proc = subprocess.Popen(
            [dvc, "repro"], cwd=ws.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        chunks: list[bytes] = []
        # Chunks, not lines: the progress bar redraws with \r and would otherwise stall.
        while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
            chunks.append(chunk)
            if echo is not None:
                sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()
        code = proc.wait()
    output = b"".join(chunks).decode(errors="replace")
    if code != 0:
        raise MlopsError(f"dvc repro failed: {_repro_error(output)}")
    return output


def _repro_error(output: str) -> str:
    """The one line that names the cause: a stage's own `error:` line, else DVC's ERROR."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in re.split(r"[\r\n]", output)]
    ours = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    if ours:
        return ours[-1]
    theirs = [line for line in lines if line.startswith("ERROR")]
    return theirs[-1] if theirs else (lines[-1] if lines else "no output")


def dvc_lock_info(ws: Workspace) -> dict[str, Any]:
    """The dvc.lock hash and, per stage, the md5 of each output."""
    import yaml

    path = ws.root / "dvc.lock"
    if not path.is_file():
        return {"dvc_lock_hash": None, "outs": {}}
    data = path.read_bytes()
    lock = yaml.safe_load(data) or {}
    outs = {
        stage: {o["path"]: o.get("md5") for o in body.get("outs", [])}
        for stage, body in (lock.get("stages") or {}).items()
    }
    return {"dvc_lock_hash": hashlib.sha256(data).hexdigest(), "outs": outs}


def git_commit(root: Path) -> dict[str, Any]:
    """The workspace's git commit (None before the first commit) and whether it has changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True, text=True
    )
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True
    )
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


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
            method={"kind": "train", "model": "mlp", "hidden": list(params.train.hidden)},
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
) -> ModelRecord:
    """Select batches, write params and selection, `dvc repro`, register, gate.

    Trains on `dataset`, else the one `--set prepare.dataset=` names, else the workspace's
    data set (`resolve_dataset`); the choice is written to params.yaml (prepare.dataset) so
    `dvc repro` and the lineage record it. Bad parameters, no trainable batch, non-finite
    inputs or a failing stage raise MlopsError with nothing registered or rewritten. With
    nothing changed since the last run, DVC runs nothing and the version already registered
    for this exact dvc.lock is returned.
    """
    say = echo or (lambda _msg: None)
    overrides = [*overrides, *([f"train.device={device}"] if device else [])]
    requested = dataset or parse_overrides(overrides).get("prepare", {}).get("dataset")
    dataset = resolve_dataset(store, str(requested) if requested is not None else None)
    # Quoted: a name like "2024" must stay a string when read back as YAML.
    overrides.append(f"prepare.dataset={json.dumps(dataset)}")
    params = load_params(ws.params_path, overrides)  # validated before anything is written
    resolve_device(params.train.device)  # `cuda` without one fails here, not after `prepare`
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ws.locks_dir / "train.lock"), timeout=LOCK_TIMEOUT_S):
        batches = select_batches(store, dataset)
        spec = store.get_dataset_spec(dataset)
        check_batches_finite(ws, DatasetSpec.from_dict(spec), batches)
        say(f"training on {len(batches)} batch(es): {', '.join(b.id for b in batches)}")
        ensure_pipeline(ws)
        write_overrides(ws, overrides)
        write_selection(ws, spec, batches)
        run = store.start_run(
            dataset=dataset,
            params=params.model_dump(mode="json", by_alias=True),
            batch_ids=[b.id for b in batches],
            git_commit=git_commit(ws.root)["commit"],
        )
        started = time.perf_counter()
        try:
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
                    metrics=_run_metrics(same[-1]),
                    duration_s=time.perf_counter() - started,
                    dvc_lock_hash=lock["dvc_lock_hash"],
                )
                return same[-1]
            record = register_candidate(
                ws,
                store,
                artifacts=Artifacts(ws.root),
                params=params,
                batches=batches,
                run_id=run.id,
            )
            record = gate(ws, store, record, params.evaluate)
            store.finish_run(
                run.id,
                status="succeeded",
                metrics=_run_metrics(record),
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


def _identity(outs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Data, weights and metrics of a pipeline run (train_info's duration is not identity)."""
    keep = ("artifacts/prepared", "artifacts/model", "artifacts/metrics.json")
    return {path: md5 for stage in outs.values() for path, md5 in stage.items() if path in keep}


def _run_metrics(record: ModelRecord) -> dict[str, Any]:
    return {
        "model": record.ref,
        **{k: record.metrics.get(k) for k in NUMBERS if k in record.metrics},
    }
