"""Content keys for the lifecycle's expensive tasks, so a re-run recognises finished work.

Prefect's default cache key includes the flow run's id: nothing carries from one run to the
next. These keys are built from what a step reads, the way DVC keys its stages: the workspace,
the data (batch ids carry their content hash; a user's file is hashed), the parameters the step
reads, and the suite or pipeline files. A run that failed at step k, run again with nothing
changed, finds steps 1..k-1 cached (their results are kept under MLOPS_HOME/prefect) and starts
at step k. A key is computed before its step runs, from inputs the step does not change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlops.params import Params


def digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _file_md5(path: Path) -> str | None:
    from pipelines.versioning import file_md5

    return file_md5(path) if path.is_file() else None


def _sections(params: Params, *names: str) -> dict[str, Any]:
    dumped = params.model_dump(mode="json", by_alias=True)
    return {n: dumped.get(n) for n in names}


def ingest_key(_context: Any, p: dict[str, Any]) -> str:
    """The request, the content of a user's file, and (with no request) the newest batch."""
    from mlops.store import Store
    from mlops.workspace import open_workspace
    from pipelines.datasets import has_data, newest_batch, resolve_dataset

    request = p.get("request")
    root = str(p["root"])
    content = None
    newest = None
    if request is not None:
        kind, _, where = str(request.source).partition(":")
        if kind in ("csv", "parquet") and where:
            content = _file_md5(Path(where).expanduser())
    else:
        ws = open_workspace(root)
        with Store.open(ws.database_url) as store:
            if p.get("dataset") or has_data(store):
                newest = newest_batch(store, resolve_dataset(store, p.get("dataset"))).id
    return digest(
        "ingest",
        root,
        request.model_dump() if request is not None else None,
        content,
        newest,
        p.get("dataset"),
        _sections(p["params"], "ingest"),
    )


def validate_key(_context: Any, p: dict[str, Any]) -> str:
    """The batch (its id carries its content hash), its data set's suite, the policy."""
    from mlops.workspace import open_workspace

    ws = open_workspace(p["root"])
    suites = sorted((ws.root / "gx" / "expectations").glob("*.json"))
    return digest(
        "validate",
        str(p["root"]),
        p["batch_id"],
        {s.name: _file_md5(s) for s in suites},
        _sections(p["params"], "validate"),
    )


def train_key(_context: Any, p: dict[str, Any]) -> str:
    """The batches training would select (ids and md5s), the parameters prepare, train and
    evaluate read (params.yaml with the run's overrides). dvc.yaml is left out: training writes
    it the first time, from the template this code ships."""
    from mlops.params import load_params
    from mlops.store import Store
    from mlops.workspace import open_workspace
    from pipelines.selection import select_batches

    ws = open_workspace(p["root"])
    params = load_params(ws.params_path, list(p.get("overrides") or []))
    with Store.open(ws.database_url) as store:
        try:
            batches = [(b.id, b.dvc_md5) for b in select_batches(store, p["dataset"])]
        except Exception:  # nothing trainable: let the step run and say so
            batches = []
    read = _sections(params, "prepare", "train", "evaluate")
    read["prepare"]["dataset"] = p["dataset"]  # training writes it into params.yaml
    return digest("train", str(ws.root), p["dataset"], batches, read)
