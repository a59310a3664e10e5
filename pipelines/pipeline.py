"""The DVC pipeline (prepare -> train -> evaluate): its files, `dvc repro`, and what a run
leaves behind for lineage (dvc.lock's hashes, the git commit).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from mlops.errors import MlopsError
from mlops.io import atomic_write_text
from mlops.settings import OFFLINE_ENV, Workspace

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


def write_overrides(ws: Workspace, overrides: dict[str, dict[str, Any]]) -> None:
    """Write parsed `--set` values into params.yaml (comments kept), so `dvc repro` sees what
    ran."""
    if not overrides:
        return
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: keeps the file's comments and order
    doc = yaml.load(ws.params_path.read_text())
    changed = False
    for section, values in overrides.items():
        for key, value in values.items():
            if doc.setdefault(section, {}).get(key) != value:
                doc[section][key] = value
                changed = True
    if changed:
        from io import StringIO

        buf = StringIO()
        yaml.dump(doc, buf)
        atomic_write_text(ws.params_path, buf.getvalue())


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
