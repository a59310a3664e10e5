"""BentoML serving: the service, its request types, hot swap, batching and packaging."""

from __future__ import annotations

import os

from mlops.settings import ENV_DATABASE_URL, ENV_HOME, ENV_WORKSPACE, Workspace

# What a server process reads (serving/service.py) and what starts one sets.
ENV_MODEL = "MLOPS_SERVE_MODEL"
ENV_VERSION = "MLOPS_SERVE_VERSION"  # a bento build: take this version's request type
ENV_WORKERS = "MLOPS_SERVE_WORKERS"
ENV_ADMIN_TOKEN = "MLOPS_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret


def server_env(
    ws: Workspace, name: str, *, workers: int | None = None, version: int | None = None
) -> dict[str, str]:
    """The environment of a process that imports the service for model `name` of `ws`:
    `bentoml serve`, or `bentoml build`. BentoML's home is the workspace's, where `mlops
    package` put the models."""
    env = {
        **os.environ,
        ENV_WORKSPACE: str(ws.root),
        ENV_HOME: str(ws.home),
        ENV_DATABASE_URL: ws.database_url,
        "BENTOML_HOME": str(ws.bentoml_home),
        ENV_MODEL: name,
    }
    if workers is not None:
        env[ENV_WORKERS] = str(workers)
    if version is not None:
        env[ENV_VERSION] = str(version)
    return env
