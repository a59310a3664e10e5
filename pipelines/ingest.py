"""Ingest: turn a source into a DVC-versioned batch recorded in the metadata store.

All checks run before anything is written: bad input leaves `data/` and the store untouched.
A batch's id comes from its bytes, so the same bytes ingested twice are one batch.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from mlops.errors import MlopsError
from mlops.io import atomic_write_bytes
from mlops.params import IngestParams
from mlops.settings import Workspace
from mlops.store import BatchRecord, Store
from pipelines import versioning
from pipelines.datasets import BUILTIN_DATASETS
from pipelines.sources import (
    AI4I_SPEC,
    DatasetSpec,
    check_dataset_name,
    generate_ai4i,
    infer_spec,
    label_key,
    load_table,
    parse_decimal,
    parse_drift,
    parse_sep,
)

BUILTIN_SOURCES = ("ai4i",)
FILE_SOURCES = ("csv", "parquet")


@dataclass(frozen=True)
class LoadedSource:
    frame: pd.DataFrame
    spec: DatasetSpec
    description: str
    inference: str | None = None
    # True when the batch joins a data set the store already has (its spec is the stored one).
    joined: bool = False
    # What a user should be told: how the file was read, which data set it went to.
    notes: tuple[str, ...] = ()
    read: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestResult:
    batch: BatchRecord
    created: bool
    inference: str | None = None


class SourceRequest(BaseModel):
    """What to ingest, as a user asked for it: a Prefect flow parameter, so plain values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    rows: int = 10_000
    seed: int = 1
    drift: str = ""
    target: str | None = None
    task: str | None = None
    dataset: str | None = None
    positive_class: str | None = None
    sep: str | None = None
    decimal: str | None = None

    def load(self, ws: Workspace, store: Store | None) -> LoadedSource:
        return load_source(ws, store=store, **self.model_dump())


def plan_request(
    params: IngestParams, overrides: list[str], request: SourceRequest | None
) -> SourceRequest | None:
    """What a lifecycle run ingests: the request given, else the params' source when the run
    overrides an `ingest.*` parameter, else nothing (the run takes the workspace's data set,
    or the params' source in an empty workspace: see `flows.lifecycle`)."""
    if request is not None:
        return request
    if any(o.split(".", 1)[0].strip() == "ingest" for o in overrides):
        return request_from_params(params)
    return None


def request_from_params(params: IngestParams) -> SourceRequest:
    return SourceRequest(
        source=params.source, rows=params.rows, seed=params.seed, drift=params.drift
    )


def load_source(
    ws: Workspace,
    source: str,
    *,
    store: Store | None = None,
    rows: int = 10_000,
    seed: int = 1,
    drift: str = "",
    target: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
    positive_class: str | None = None,
    sep: str | None = None,
    decimal: str | None = None,
) -> LoadedSource:
    """Read or generate a source: `ai4i`, or `csv:PATH` / `parquet:PATH` from any readable
    path (a relative one is relative to the current directory).

    With a `store`, a file joins the workspace's data set: the one named by `dataset`, else the
    only user data set, else the data set named after the file (a new one, whose spec is
    inferred with `target`). A batch that joins keeps the stored spec: a batch whose columns
    differ is still ingested, and fails validation with the difference named.
    """
    kind, colon, location = source.partition(":")
    if kind == "ai4i" and not colon:
        if rows <= 0:
            raise MlopsError(f"--rows must be a positive number of rows, got {rows}")
        if dataset not in (None, AI4I_SPEC.name):
            raise MlopsError(f"--dataset {dataset!r}: the built-in source is data set 'ai4i'")
        frame = generate_ai4i(rows, seed, parse_drift(drift) if drift else None)
        desc = f"ai4i:rows={rows},seed={seed}" + (f",drift={drift}" if drift else "")
        return LoadedSource(frame, AI4I_SPEC, desc)
    if kind not in FILE_SOURCES or not colon or not location:
        known = ", ".join([*BUILTIN_SOURCES, *(f"{k}:PATH" for k in FILE_SOURCES)])
        raise MlopsError(f"unknown source {source!r} (known: {known})")
    if kind == "parquet" and (sep or decimal):
        raise MlopsError("--sep and --decimal apply to CSV sources only")
    # Sources are READ from wherever the user can read them; writes stay in the workspace.
    path = (Path.cwd() / Path(location).expanduser()).resolve()
    where = f"{kind} source {path}"
    name, spec, notes = _choose_dataset(store, dataset, path, where)
    table = load_table(path, kind, sep=parse_sep(sep), decimal=parse_decimal(decimal))  # type: ignore[arg-type]
    notes = [*table.notes(), *notes]
    read = {"sep": table.sep, "bom": table.bom, "decimal": table.decimal}
    desc = f"{kind}:{path}"
    if spec is not None:  # joining: the stored spec rules; options may only repeat it
        _check_same(spec, target=target, task=task, positive_class=positive_class)
        notes += unlabelled_note(table.frame, spec.target)
        return LoadedSource(table.frame, spec, desc, joined=True, notes=tuple(notes), read=read)
    if target is None:
        raise MlopsError(f"{where}: say which column is the label with --target COLUMN")
    spec, inference = infer_spec(
        table.frame, name, target, task, where, positive_class=positive_class
    )
    notes += unlabelled_note(table.frame, spec.target)
    return LoadedSource(table.frame, spec, desc, inference, notes=tuple(notes), read=read)


def unlabelled_rows(frame: pd.DataFrame, target: str) -> int:
    return int(frame[target].isna().sum()) if target in frame.columns else 0


def unlabelled_note(frame: pd.DataFrame, target: str) -> list[str]:
    """Rows without a label are kept in the batch (to be labelled later) and left out of
    training and evaluation: said at ingest, never silently."""
    n = unlabelled_rows(frame, target)
    if not n:
        return []
    return [
        f"{n:,} of {len(frame):,} rows have no label in '{target}': kept in the batch for "
        "labelling later, left out of training and evaluation"
    ]


def _choose_dataset(
    store: Store | None, requested: str | None, path: Path, where: str
) -> tuple[str, DatasetSpec | None, list[str]]:
    """The data set a file goes to, its stored spec (None for a new one), and what to say."""
    stem = _dataset_name(path)
    known = {d.name: d for d in store.list_datasets()} if store is not None else {}
    user = [n for n in known if n not in BUILTIN_DATASETS]
    notes: list[str] = []
    if requested:
        name = check_dataset_name(requested)
    elif len(user) == 1:
        name = user[0]
        if name != stem:
            notes.append(
                f"joining data set {name!r}, this workspace's data set (--dataset NAME to "
                "start another)"
            )
    elif stem in known or not user:
        name = stem
    else:
        raise MlopsError(
            f"{where}: this workspace holds {len(user)} data sets ({', '.join(user)}): pass "
            "--dataset NAME (an existing one to add this batch to it, a new name to start one)"
        )
    if name in known:
        return name, DatasetSpec.from_dict(known[name].spec), notes
    notes.append(
        f"new data set {name!r}"
        + ("" if requested else " (named after the file; --dataset NAME to choose)")
    )
    return name, None, notes


def _check_same(
    spec: DatasetSpec, *, target: str | None, task: str | None, positive_class: str | None
) -> None:
    """Options given when joining a data set must agree with its spec: no silent relabelling."""
    asked = {
        "--target": (target, spec.target),
        "--task": (task, spec.task),
        "--positive-class": (
            None if positive_class is None else label_key(positive_class),
            None if spec.positive_class is None else label_key(spec.positive_class),
        ),
    }
    for option, (given, recorded) in asked.items():
        if given is not None and given != recorded:
            raise MlopsError(
                f"data set {spec.name!r} has {option.removeprefix('--')} {recorded!r}, not "
                f"{given!r}: pass --dataset NEW_NAME to start a data set with another spec"
            )


def _dataset_name(path: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem.lower()).strip("-")
    return name[:128] or "dataset"


def schema_hash(frame: pd.DataFrame) -> str:
    schema = [[str(c), str(t)] for c, t in frame.dtypes.items()]
    return hashlib.sha256(json.dumps(schema).encode()).hexdigest()[:16]


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    # Deterministic bytes for the same frame: no index, fixed compression.
    frame.to_parquet(buf, index=False, compression="snappy", engine="pyarrow")
    return buf.getvalue()


def ingest(ws: Workspace, store: Store, loaded: LoadedSource) -> IngestResult:
    """Write the batch under data/raw/, track and push it with DVC, record it in the store."""
    if not loaded.joined:  # a new spec must describe its first batch; a joining batch may
        loaded.spec.check(loaded.frame, loaded.description)  # differ: validation names how
    data = to_parquet_bytes(loaded.frame)
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    batch_id = f"{loaded.spec.name}-{md5[:12]}"
    path = ws.raw_dir / f"{batch_id}.parquet"

    if not loaded.joined:
        store.create_dataset(loaded.spec.name, loaded.spec.task, loaded.spec.to_dict())
    try:
        existing = store.get_batch(batch_id)
    except MlopsError:
        existing = None
    if existing is not None:
        return IngestResult(existing, created=False, inference=loaded.inference)

    fresh_file = not path.exists()
    try:
        if fresh_file:
            atomic_write_bytes(path, data)
        dvc_md5 = versioning.track(ws, path)
        record, created = store.add_batch(
            batch_id=batch_id,
            dataset=loaded.spec.name,
            source=loaded.description,
            path=ws.relative(path),
            dvc_md5=dvc_md5,
            rows=len(loaded.frame),
            schema_hash=schema_hash(loaded.frame),
            meta={
                "columns": [str(c) for c in loaded.frame.columns],
                "read": loaded.read,
                "unlabelled": unlabelled_rows(loaded.frame, loaded.spec.target),
            },
        )
    except BaseException:
        # Nothing half-written: a batch the store does not know is not left behind in data/.
        if fresh_file:
            versioning.untrack(ws, path)
        raise
    return IngestResult(record, created=created, inference=loaded.inference)


def checkout(ws: Workspace, store: Store, batch_id: str) -> tuple[BatchRecord, Path]:
    """Restore a batch's exact bytes from the DVC cache or remote; checks its md5."""
    batch = store.get_batch(batch_id)
    path = ws.resolve(batch.path)
    versioning.restore(ws, path)
    if versioning.file_md5(path) != batch.dvc_md5:
        raise MlopsError(f"restored {batch.path} does not match its recorded md5 {batch.dvc_md5}")
    return batch, path
