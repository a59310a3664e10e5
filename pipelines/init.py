"""`mlops init`: create (or complete) a workspace: git, DVC with a local remote, params,
folders, the store, the GX context with the built-in suite, and a first commit.

It sits beside the steps it calls (versioning, validation); `mlops/` below knows no step.
"""

from __future__ import annotations

from pathlib import Path

from mlops.errors import MlopsError
from mlops.io import atomic_write_text
from mlops.settings import Workspace, configure_environment, get_workspace
from mlops.store import Store
from mlops.workspace import template_text
from pipelines.validate import init_gx
from pipelines.versioning import init_repo, initial_commit

GITIGNORE_LINES = (".mlops/", "artifacts/checkpoints/", "__pycache__/")
# What `mlops init` writes that belongs in git: the first commit holds these and nothing else.
INIT_FILES = (
    "params.yaml",
    ".gitignore",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "gx",
    "data/raw/.gitkeep",
    "data/quarantine/.gitkeep",
)


def init_workspace(root: str | Path) -> Workspace:
    """Create (or complete) a workspace: git, DVC with a local remote, params, folders, store."""
    path = Path(root).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise MlopsError(f"cannot create a workspace at {path}: it is a file")
    path.mkdir(parents=True, exist_ok=True)
    ws = get_workspace(path)
    configure_environment(ws)

    created_git = init_repo(ws)
    if not ws.params_path.exists():
        atomic_write_text(ws.params_path, template_text("params.yaml"))
    for folder in (ws.raw_dir, ws.quarantine_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitkeep").touch()
    _ensure_gitignore(ws.root / ".gitignore", _home_ignore(ws))
    ws.home.mkdir(parents=True, exist_ok=True)
    Store.open(ws.database_url).close()
    init_gx(ws)
    if created_git:
        # Only what init wrote: a folder of the user's own files is theirs to commit, or not.
        initial_commit(ws.root, list(INIT_FILES), "mlops init: workspace")
    return ws


def _home_ignore(ws: Workspace) -> tuple[str, ...]:
    if ws.home.is_relative_to(ws.root) and ws.home != ws.root / ".mlops":
        return (*GITIGNORE_LINES, ws.relative(ws.home) + "/")
    return GITIGNORE_LINES


def _ensure_gitignore(path: Path, lines: tuple[str, ...]) -> None:
    existing = path.read_text().splitlines() if path.exists() else []
    missing = [line for line in lines if line not in existing]
    if missing:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join([*existing, *missing]) + "\n")
        tmp.replace(path)
