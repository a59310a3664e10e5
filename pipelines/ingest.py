"""Ingest: turn a source into a DVC-versioned batch recorded in the metadata store.

All checks run before anything is written: bad input leaves `data/` and the store untouched.
A batch's id comes from its bytes, so the same bytes ingested twice are one batch.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlops.errors import MlopsError
from mlops.io import atomic_write_bytes
from mlops.settings import Workspace
from mlops.store import BatchRecord, Store
from pipelines import versioning
from pipelines.sources import (
    AI4I_SPEC,
    DatasetSpec,
    generate_ai4i,
    infer_spec,
    parse_drift,
    read_table,
)

BUILTIN_SOURCES = ("ai4i",)
FILE_SOURCES = ("csv", "parquet")


@dataclass(frozen=True)
class LoadedSource:
    frame: pd.DataFrame
    spec: DatasetSpec
    description: str
    inference: str | None = None


@dataclass(frozen=True)
class IngestResult:
    batch: BatchRecord
    created: bool
    inference: str | None = None


def load_source(
    ws: Workspace,
    source: str,
    *,
    rows: int = 10_000,
    seed: int = 1,
    drift: str = "",
    target: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
) -> LoadedSource:
    """Read or generate a source: `ai4i`, `csv:PATH` or `parquet:PATH` (inside the workspace)."""
    kind, sep, location = source.partition(":")
    if kind == "ai4i" and not sep:
        if rows <= 0:
            raise MlopsError(f"--rows must be a positive number of rows, got {rows}")
        frame = generate_ai4i(rows, seed, parse_drift(drift) if drift else None)
        desc = f"ai4i:rows={rows},seed={seed}" + (f",drift={drift}" if drift else "")
        return LoadedSource(frame, AI4I_SPEC, desc)
    if kind in FILE_SOURCES and sep and location:
        path = ws.resolve(location)
        frame = read_table(path, kind)  # type: ignore[arg-type]
        where = f"{kind} source {ws.relative(path)}"
        if target is None:
            raise MlopsError(f"{where}: say which column is the label with --target COLUMN")
        name = dataset or _dataset_name(path)
        spec, inference = infer_spec(frame, name, target, task, where)
        return LoadedSource(frame, spec, f"{kind}:{ws.relative(path)}", inference)
    known = ", ".join([*BUILTIN_SOURCES, *(f"{k}:PATH" for k in FILE_SOURCES)])
    raise MlopsError(f"unknown source {source!r} (known: {known})")


def _dataset_name(path: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem.lower()).strip("-")
    return name or "dataset"


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
    loaded.spec.check(loaded.frame, loaded.description)
    data = to_parquet_bytes(loaded.frame)
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    batch_id = f"{loaded.spec.name}-{md5[:12]}"
    path = ws.raw_dir / f"{batch_id}.parquet"

    store.upsert_dataset(loaded.spec.name, loaded.spec.task, loaded.spec.to_dict())
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
            meta={"columns": [str(c) for c in loaded.frame.columns]},
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
