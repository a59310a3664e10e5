"""Machine settings from the environment (prefix MLOPS_) and the workspace layout.

Nothing happens at import time; `get_workspace()` and `configure_environment()` do the work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mlops.errors import MlopsError

ENV_HOME = "MLOPS_HOME"
ENV_DATABASE_URL = "MLOPS_DATABASE_URL"
ENV_WORKSPACE = "MLOPS_WORKSPACE"

# The tools phone home by default; there is no internet here and no reason to on a user's box.
OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    # Prefect's temporary server gets 20 s to start by default: not enough on a busy laptop.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


@dataclass(frozen=True)
class Workspace:
    """A workspace: the git/DVC-tracked project folder plus its machine-state folder (home)."""

    root: Path
    home: Path
    database_url: str

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def gx_dir(self) -> Path:
        return self.root / "gx"

    @property
    def dvc_remote(self) -> Path:
        return self.home / "dvc-remote"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def evidently_dir(self) -> Path:
        return self.home / "evidently"

    @property
    def predictions_dir(self) -> Path:
        return self.home / "predictions"

    def is_initialised(self) -> bool:
        return self.params_path.is_file() and (self.root / ".dvc").is_dir()

    def require_initialised(self) -> Workspace:
        if not self.is_initialised():
            raise MlopsError(
                f"{self.root} is not an mlops workspace (no params.yaml or .dvc/): "
                f"run `mlops init {self.root}` first"
            )
        return self

    def resolve(self, user_path: str | Path) -> Path:
        """Resolve a user path; it must stay inside the workspace (no `..`, no symlink out)."""
        raw = Path(user_path).expanduser()
        path = (raw if raw.is_absolute() else self.root / raw).resolve()
        if not path.is_relative_to(self.root):
            raise MlopsError(f"path {str(user_path)!r} is outside the workspace {self.root}")
        return path

    def version_dir(self, stored: str) -> Path:
        """A model version's folder from its stored path: relative to MLOPS_HOME (so moving
        the home moves every version with it); an absolute path (older stores) as it is."""
        path = Path(stored)
        return path if path.is_absolute() else self.home / path

    def home_relative(self, path: Path) -> str:
        """What the store keeps for a folder under MLOPS_HOME: its path relative to the home."""
        return path.resolve().relative_to(self.home.resolve()).as_posix()

    def relative(self, path: Path) -> str:
        """A workspace-relative POSIX path, as recorded in the store."""
        return path.resolve().relative_to(self.root).as_posix()


def get_workspace(root: str | Path | None = None) -> Workspace:
    """The workspace at `root` (default: $MLOPS_WORKSPACE or the current directory)."""
    base = Path(root or os.environ.get(ENV_WORKSPACE) or ".").expanduser().resolve()
    home_env = os.environ.get(ENV_HOME)
    home = Path(home_env).expanduser().resolve() if home_env else base / ".mlops"
    url = os.environ.get(ENV_DATABASE_URL) or f"sqlite:///{home / 'mlops.db'}"
    return Workspace(root=base, home=home, database_url=url)


def configure_environment(ws: Workspace) -> None:
    """Point the tools' own state at the workspace home and switch off their telemetry.

    Call before importing Prefect or BentoML: both read their home folder when first imported.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(ws.prefect_home))
    os.environ.setdefault("BENTOML_HOME", str(ws.bentoml_home))


_CREDENTIALS = re.compile(r"(?P<head>(?:[A-Za-z][\w+.-]*://)?[^:/@\s]*):[^@\s]*@")


def redact_url(url: str) -> str:
    """A database URL safe for logs: the password, if any, is masked, parseable or not."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return _CREDENTIALS.sub(r"\g<head>:***@", url)
