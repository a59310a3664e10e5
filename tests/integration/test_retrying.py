"""Task retries on a real (temporary) Prefect server: a transient failure (a connection reset,
a database busy for a moment) is retried and the run completes; bad input and a missing file
fail at once, never retried."""

from __future__ import annotations

from collections import Counter

import pytest
from prefect import flow, task

from flows.retrying import is_transient, transient
from mlops.errors import MlopsError, ValidationFailed

pytestmark = [pytest.mark.integration]

ATTEMPTS: Counter[str] = Counter()


@task(retries=2, retry_delay_seconds=0, retry_condition_fn=transient)
def step(key: str, error: str) -> str:
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] == 1:
        raise {
            "reset": ConnectionResetError("connection reset by peer"),
            "bad-input": MlopsError("ingest.rows: expected an integer"),
            "missing": FileNotFoundError("data/raw/x.parquet"),
        }[error]
    return "done"


@flow
def one_step(key: str, error: str) -> str:
    return step(key, error)


@pytest.mark.parametrize(
    ("error", "completes", "attempts"),
    [("reset", True, 2), ("bad-input", False, 1), ("missing", False, 1)],
)
def test_only_transient_failures_are_retried(
    prefect_server: None, error: str, completes: bool, attempts: int
) -> None:
    key = f"{error}-{len(ATTEMPTS)}"
    state = one_step(key, error, return_state=True)
    assert state.is_completed() is completes, state.message
    assert ATTEMPTS[key] == attempts


def test_what_counts_as_transient() -> None:
    from sqlalchemy.exc import OperationalError

    locked = OperationalError("UPDATE batches", {}, Exception("database is locked"))
    assert (
        is_transient(locked)
        and is_transient(TimeoutError())
        and is_transient(ConnectionRefusedError())
    )
    assert not is_transient(ValidationFailed("batch b failed validation"))
    assert not is_transient(PermissionError("/etc/shadow")) and not is_transient(KeyError("x"))
