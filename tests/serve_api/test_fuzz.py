"""Schemathesis against the running service: whatever the request, never a 5xx.

Every operation in /docs.json is fuzzed with data that fits its schema (positive) and, where
there is an input to break, data that does not (negative). Each request is sent with and
without the admin token, so /admin/reload is exercised past its auth check too. Hypothesis is
derandomized and has no example database, so a run is the same on every machine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from serving_kit import TOKEN, Served

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# operation -> (examples per mode, modes); the health endpoints take no input, so there is
# nothing to make negative and only a few distinct requests to send.
OPERATIONS: dict[tuple[str, str], tuple[int, tuple[GenerationMode, ...]]] = {
    ("POST", "/predict"): (150, (POSITIVE, NEGATIVE)),
    ("POST", "/admin/reload"): (40, (POSITIVE, NEGATIVE)),
    ("GET", "/healthz"): (5, (POSITIVE,)),
    ("GET", "/livez"): (5, (POSITIVE,)),
    ("GET", "/readyz"): (5, (POSITIVE,)),
    ("GET", "/metrics"): (5, (POSITIVE,)),
}
CASES = [
    pytest.param(method, path, mode, n, id=f"{method} {path} {mode.value}")
    for (method, path), (n, modes) in OPERATIONS.items()
    for mode in modes
]


@pytest.fixture(scope="module")
def api(served: Served) -> schemathesis.BaseSchema:
    served.reset()
    return schemathesis.openapi.from_url(f"{served.url}/docs.json", timeout=30)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_every_operation_in_the_schema_is_fuzzed(api: schemathesis.BaseSchema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode", "examples"), CASES)
def test_no_request_gets_a_server_error(
    served: Served,
    api: schemathesis.BaseSchema,
    session: requests.Session,
    method: str,
    path: str,
    mode: GenerationMode,
    examples: int,
) -> None:
    operation = api[path][method]
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(case=operation.as_strategy(generation_mode=mode), authorised=st.booleans())
    def fuzz(case: schemathesis.Case, authorised: bool) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"} if authorised else None
        response = case.call(base_url=served.url, session=session, headers=headers, timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error], headers=headers)

    fuzz()
    print(f"{method} {path} {mode.value}: {statuses.total()} requests, statuses {dict(statuses)}")
    assert statuses.total() > 0
    if mode is POSITIVE and path == "/predict":  # it reached the model, not just the parser
        assert statuses[200] > 0, statuses
