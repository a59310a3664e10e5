"""Which task failures are worth a retry: the transient ones (a connection refused or reset, a
timeout, a database busy for a moment), never bad input, a blocked batch or a missing file,
which fail the same way every time.

    @task(retries=2, retry_delay_seconds=5, retry_condition_fn=transient)
"""

from __future__ import annotations

from typing import Any


def is_transient(exc: BaseException) -> bool:
    import httpx
    from sqlalchemy.exc import OperationalError

    from mlops.errors import MlopsError

    # Our own errors name bad input; these OSErrors a wrong path, not the moment.
    lasting = MlopsError | FileNotFoundError | PermissionError | IsADirectoryError
    if isinstance(exc, lasting | NotADirectoryError):
        return False
    return isinstance(exc, OSError | TimeoutError | httpx.TransportError | OperationalError)


def transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry when the run failed on a transient error."""
    try:
        state.result()
    except Exception as exc:  # the failure the state holds
        return is_transient(exc)
    return False
