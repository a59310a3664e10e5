"""Where a flow's fan-out tasks run: Prefect's default (threads in the flow's process), or Dask.

    default              Prefect's ThreadPoolTaskRunner: nothing to set up
    dask                 a temporary local Dask cluster for the flow run: one single-threaded
                         worker process per core
    dask=tcp://HOST:PORT an existing Dask scheduler (`dask scheduler`, `dask worker ...`)

Only mapped tasks go to the runner (a flow's direct task calls run in the flow's process). Dask
workers run them in their own processes: they must reach the workspace folder (a shared file
system beyond one machine), the store (MLOPS_DATABASE_URL: PostgreSQL beyond one machine) and
the Prefect API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlops.errors import MlopsError

KINDS = ("default", "dask")


@dataclass(frozen=True)
class Executor:
    kind: str = "default"
    address: str | None = None  # dask: a scheduler's address; None: a temporary local cluster

    @classmethod
    def parse(cls, text: str | None) -> Executor:
        """`None`, "default", "dask" or "dask=tcp://HOST:PORT"; anything else is one line."""
        if text is None or text.strip() in ("", "default"):
            return cls()
        kind, sep, address = text.strip().partition("=")
        if kind != "dask" or (sep and "://" not in address):
            raise MlopsError(
                f"--executor {text!r}: expected default, dask (a local cluster) or "
                "dask=tcp://HOST:PORT (a running Dask scheduler)"
            )
        return cls("dask", address or None)

    @property
    def is_dask(self) -> bool:
        return self.kind == "dask"

    def __str__(self) -> str:
        return f"dask={self.address}" if self.address else self.kind

    def task_runner(self) -> Any:
        """A Prefect task runner for `flow.with_options(task_runner=...)`; None: the default."""
        if not self.is_dask:
            return None
        from prefect_dask import DaskTaskRunner

        if self.address:
            return DaskTaskRunner(address=self.address)
        # One thread a worker: training and validation are CPU-bound Python and torch, and a
        # worker process per core runs them side by side without sharing one interpreter.
        return DaskTaskRunner(cluster_kwargs={"threads_per_worker": 1})


@contextmanager
def api_for_workers(executor: Executor) -> Iterator[None]:
    """Give Dask workers the flow's Prefect API.

    Without PREFECT_API_URL a flow starts a temporary server that only its own process knows
    of, and each worker process would start one more (seconds each, none of them the flow's).
    So the temporary server is started here and named in the settings Prefect hands to the
    workers with every task. A remote cluster needs a server it can reach (`mlops server`).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not executor.is_dask or PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one Prefect's client itself would start
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield
