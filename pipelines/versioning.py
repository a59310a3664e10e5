"""Data versioning with DVC: track, push, move and restore files of a workspace.

DVC takes its own repository lock and fails at once when another process holds it, so every
operation here runs under a file lock in the workspace home: concurrent ingestions queue instead.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mlops.errors import MlopsError
from mlops.settings import Workspace

REMOTE_NAME = "local"
LOCK_TIMEOUT_S = 600


def _dvc() -> Any:
    """Import DVC (slow; only the commands that need it pay) with its console handlers removed.

    `import dvc` binds handlers to the sys.stdout/sys.stderr of that moment; a CLI embedding it
    (or a test capturing output) later writes to closed streams. Without them, DVC's records go
    through standard logging: warnings still reach stderr, its progress chatter does not.
    """
    import logging

    from dvc.repo import Repo

    for name in ("dvc", "dvc_objects", "dvc_data"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.WARNING)
    return Repo


@contextmanager
def dvc_repo(ws: Workspace) -> Iterator[Any]:
    """The workspace's DVC repo, held under the workspace's DVC lock."""
    Repo = _dvc()

    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(ws.locks_dir / "dvc.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            repo = Repo(str(ws.root))
            try:
                yield repo
            finally:
                repo.close()
    except Timeout:
        raise MlopsError(
            f"timed out waiting {LOCK_TIMEOUT_S}s for the DVC lock in {ws.locks_dir}"
        ) from None


def git_toplevel(path: Path) -> Path | None:
    out = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True
    )
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 else None


def init_repo(ws: Workspace) -> bool:
    """git init (when not inside a repo) and dvc init; both are skipped when already done.

    Returns True when it created the git repository (its caller then makes the first commit).
    """
    Repo = _dvc()

    top = git_toplevel(ws.root)
    created = top is None
    if top is None:
        subprocess.run(["git", "init", "-q", str(ws.root)], check=True)
        top = ws.root
    if not (ws.root / ".dvc").is_dir():
        Repo.init(str(ws.root), subdir=top != ws.root).close()
    ensure_remote(ws)
    return created


def initial_commit(root: Path, paths: list[str], message: str) -> str:
    """Commit exactly `paths` (those that exist), so lineage always names a commit; returns
    its hash. Uses the user's git identity, or a placeholder where none is configured."""
    existing = [p for p in paths if (root / p).exists()]
    subprocess.run(["git", "add", "--", *existing], cwd=root, check=True, capture_output=True)
    # No identity configured (a fresh container): a placeholder. GIT_AUTHOR_* still win.
    who = subprocess.run(["git", "config", "user.email"], cwd=root, capture_output=True)
    identity = ["-c", "user.name=mlops", "-c", "user.email=mlops@localhost"]
    cmd = ["git", *(identity if who.returncode else []), "-c", "commit.gpgsign=false", "commit"]
    out = subprocess.run(
        [*cmd, "-q", "--no-verify", "-m", message], cwd=root, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise MlopsError(f"git commit in {root} failed: {_first(out.stderr or out.stdout)}")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return head.stdout.strip()


def _first(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def ensure_remote(ws: Workspace) -> None:
    """Point the DVC remote at `<home>/dvc-remote`, in config.local: it is machine state."""
    from dvc.config import Config

    ws.dvc_remote.mkdir(parents=True, exist_ok=True)
    url = str(ws.dvc_remote)
    config = Config(str(ws.root / ".dvc"))
    current = config.load_one("local")
    if current.get("remote", {}).get(REMOTE_NAME, {}).get("url") == url:
        return
    with config.edit("local") as conf:
        conf.setdefault("remote", {})[REMOTE_NAME] = {"url": url}
        conf.setdefault("core", {})["remote"] = REMOTE_NAME


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def track(ws: Workspace, path: Path) -> str:
    """`dvc add` + `dvc push` one file; returns its DVC md5."""
    ensure_remote(ws)
    with dvc_repo(ws) as repo:
        stages = repo.add([str(path)])
        md5 = str(stages[0].outs[0].hash_info.value)
        repo.push([str(path)], remote=REMOTE_NAME)
    return md5


def untrack(ws: Workspace, path: Path) -> None:
    """Forget a file that was never recorded in the store (roll back a failed ingestion)."""
    for p in (path, path.with_name(path.name + ".dvc")):
        p.unlink(missing_ok=True)


def move(ws: Workspace, src: Path, dst: Path) -> None:
    """`dvc move`: the file and its .dvc pointer move together; the cache keeps the bytes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dvc_repo(ws) as repo:
        repo.move(str(src), str(dst))
        repo.push([str(dst)], remote=REMOTE_NAME)


def restore(ws: Workspace, path: Path) -> None:
    """Bring back a tracked file from the DVC cache, or from the remote when the cache lacks it."""
    pointer = path.with_name(path.name + ".dvc")
    if not pointer.is_file():
        raise MlopsError(f"{ws.relative(path)} is not tracked by DVC (no {pointer.name})")
    ensure_remote(ws)
    with dvc_repo(ws) as repo:
        try:
            repo.checkout([str(pointer)], force=True)
        except Exception:
            # Not in the local cache (a new clone, a cleared cache): fetch from the remote.
            repo.fetch([str(pointer)], remote=REMOTE_NAME)
            repo.checkout([str(pointer)], force=True)


def status(ws: Workspace) -> dict[str, Any]:
    """`dvc status` of the workspace: an empty dict means everything is in sync."""
    with dvc_repo(ws) as repo:
        return dict(repo.status())
