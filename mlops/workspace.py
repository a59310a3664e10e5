"""Open workspaces (creating one is `pipelines/init.py`'s job: it calls the steps)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mlops.io import atomic_write_text
from mlops.settings import Workspace, configure_environment, get_workspace


def template_text(name: str) -> str:
    return resources.files("mlops.templates").joinpath(name).read_text()


def open_workspace(root: str | Path | None = None) -> Workspace:
    """An initialised workspace with its environment configured."""
    ws = get_workspace(root).require_initialised()
    configure_environment(ws)
    return ws


def ensure_pipeline(ws: Workspace) -> Path:
    """Write the DVC pipeline (prepare -> train -> evaluate) when the workspace has none.

    Not written by `init`: stages that never ran would make `dvc status` report them as changed
    before there is anything to train.
    """
    path = ws.root / "dvc.yaml"
    if not path.exists():
        atomic_write_text(path, template_text("dvc-pipeline.yaml"))
    return path
