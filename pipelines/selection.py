"""Selection: which batches a training run takes, written where `dvc repro` reads them.

Only batches whose latest validation passed or warned are trained on; they are checked for
non-finite inputs before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mlops.errors import MlopsError
from mlops.io import atomic_write_json
from mlops.settings import Workspace
from mlops.store import BatchRecord, Store
from pipelines.pipeline import Artifacts
from pipelines.prepare import check_finite
from pipelines.sources import DatasetSpec


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


def check_batches_finite(ws: Workspace, spec: DatasetSpec, batches: list[BatchRecord]) -> None:
    """Non-finite inputs fail here, before params.yaml, dvc.lock or a model folder is touched
    (a batch validated under the `warn` policy can still carry them)."""
    for b in batches:
        path = ws.resolve(b.path)
        if path.is_file():  # a missing file is `prepare`'s to report (it names the checkout)
            check_finite(pd.read_parquet(path), spec, f"batch {b.id}")
