"""`mlops package VERSION`: a model version into the BentoML model store, and a bento around it.

The model store entry holds the version's folder as it is (weights, preprocessing, manifest),
labelled with its version, data hash, runtime and primary metric; the bento is built from the
service code in `serving/` with that model. Both are recorded in the metadata store, and
packaging the same version again reuses both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops.errors import MlopsError
from mlops.settings import Workspace
from mlops.store import ModelRecord, PackageRecord, Store
from pipelines.artifact import model_folder, verify_model
from serving import server_env

SERVICE = "serving.service:MlopsService"
# The source a bento carries: the service and what it imports (never the training code).
BENTO_INCLUDE = [
    "serving/*.py",
    "mlops/*.py",
    "mlops/store/*.py",
    "mlops/store/migrations/**",
    "mlops/templates/*",
    "pipelines/__init__.py",
    "pipelines/artifact.py",
    "pipelines/model.py",
    "pipelines/sources.py",
]
BENTO_PACKAGES = [
    "numpy",
    "pandas<3",
    "pyarrow",
    "onnxruntime",
    "sqlalchemy>=2",
    "alembic",
    "psycopg[binary]",
    "pydantic>=2.6",
    "pyyaml",
    "filelock",
]


@dataclass(frozen=True)
class Packaged:
    record: ModelRecord
    package: PackageRecord
    reused: bool


def model_tag(record: ModelRecord) -> str:
    return f"{bento_name(record.name)}:v{record.version}"


def bento_name(name: str) -> str:
    # BentoML names: lowercase letters, digits, '_', '-', '.'.
    return "".join(c if c.isalnum() or c in "_-." else "-" for c in name.lower())


def data_hash(record: ModelRecord) -> str:
    """One short hash of the DVC hashes of the batches a version was trained on."""
    md5s = sorted(str(b.get("dvc_md5")) for b in record.lineage.get("batches", []))
    return hashlib.sha256("\n".join(md5s).encode()).hexdigest()[:16]


def model_store(ws: Workspace) -> Any:
    """The workspace's BentoML model store, named explicitly: BentoML fixes its home when first
    imported, and one process may package for more than one workspace."""
    from bentoml._internal.models import ModelStore

    return ModelStore(str(ws.bentoml_home / "models"))


def bento_store(ws: Workspace) -> Any:
    from bentoml._internal.bento import BentoStore

    return BentoStore(str(ws.bentoml_home / "bentos"))


def _exists(ws: Workspace, kind: str, tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        if kind == "model":
            bentoml.models.get(tag, _model_store=model_store(ws))
        else:
            bentoml.bentos.get(tag, _bento_store=bento_store(ws))
    except NotFound:
        return False
    return True


def package_version(store: Store, ws: Workspace, ref: str | int, *, bento: bool = True) -> Packaged:
    """Put a version in the BentoML model store and build its bento (each only if missing)."""
    import bentoml

    record = store.get_model(ref)
    if record.stage == "rejected":
        raise MlopsError(f"{record.ref} was rejected by the gate: it is not packaged")
    existing = store.get_package(record.id)
    tag = model_tag(record)
    have_model = _exists(ws, "model", tag)
    have_bento = existing is not None and bool(existing.bento_tag)
    have_bento = have_bento and _exists(ws, "bento", existing.bento_tag if existing else "")
    if existing and have_model and (have_bento or not bento):
        return Packaged(record, existing, reused=True)
    folder = model_folder(ws.version_dir(record.path))
    verify_model(folder)  # a corrupt folder is never packaged
    if not have_model:
        metric = record.metrics.get("primary_metric", "")
        labels = {
            "model": record.name,
            "version": str(record.version),
            "data_hash": data_hash(record),
            "runtime": record.runtime,
            "stage": record.stage,
            "primary_metric": str(metric),
            "score": f"{record.metrics.get(metric, '')}",
        }
        metadata = {
            "mlops_version_id": record.id,
            "metrics": {k: v for k, v in record.metrics.items() if isinstance(v, int | float)},
            "dataset": record.dataset,
        }
        (ws.bentoml_home / "models").mkdir(parents=True, exist_ok=True)
        with bentoml.models.create(
            tag, labels=labels, metadata=metadata, _model_store=model_store(ws)
        ) as entry:
            shutil.copytree(folder, entry.path, dirs_exist_ok=True)
    bento_tag = existing.bento_tag if existing is not None and have_bento else ""
    if bento and not bento_tag:
        bento_tag = build_bento(ws, record, tag)
    package = store.add_package(record.id, model_tag=tag, bento_tag=bento_tag)
    return Packaged(record, package, reused=False)


def build_bento(ws: Workspace, record: ModelRecord, tag: str) -> str:
    """`bentoml build` of the service with this version's model, in a child process: building
    imports the service, which reads its request type from the version being packaged."""
    source = Path(__file__).resolve().parent.parent
    args = {
        "service": SERVICE,
        "name": f"mlops-{bento_name(record.name)}",
        "version": f"v{record.version}",
        "build_ctx": str(source),
        "include": BENTO_INCLUDE,
        "models": [tag],
        "labels": {"model": record.name, "version": str(record.version)},
        "python": {"packages": BENTO_PACKAGES},
        "description": f"{record.ref}: served by mlops (see README, 'Serving')",
    }
    script = (
        "import json, sys, bentoml\n"
        "a = json.loads(sys.argv[1])\n"
        "b = bentoml.bentos.build(a.pop('service'), **a)\n"
        "print(b.tag)\n"
    )
    env = server_env(ws, record.name, version=record.version)
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=source,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MlopsError(f"bentoml build of {record.ref} failed: {last}")
    return proc.stdout.strip().splitlines()[-1]
