"""Progressive delivery against the session's real server under steady load from a client here:
a model trained on shuffled labels, forced into the rollout, is rolled back automatically at the
first step with the numbers in the audit; a good one is promoted step by step; no client request
fails either way."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML
from serving_kit import Served

from mlops.params import load_params

STEPS = [0.2, 0.5]


class Load:
    """A client sending 10-record requests back to back, each with a fresh request id."""

    def __init__(self, served: Served) -> None:
        self.served, self.statuses = served, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rows = self.served.sample
        with httpx.Client(base_url=self.served.url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                batch = [rows[(i + k) % len(rows)] for k in range(10)]
                r = client.post(
                    "/predict", json={"records": batch}, headers={"X-Request-ID": uuid.uuid4().hex}
                )
                self.statuses.append(r.status_code)
                i += 10

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def rollout_params(served: Served) -> Iterator[None]:
    """Small steps for the test: judged after 60 canary requests."""
    yaml = YAML()
    path = served.ws.params_path
    before = path.read_text()
    doc = yaml.load(before)
    doc["rollout"].update(
        {"steps": STEPS, "min_requests": 60, "step_timeout_s": 120, "max_disagreement": 0.25}
    )
    yaml.dump(doc, path)
    try:
        yield
    finally:
        path.write_text(before)
        served.reset()


def _audit(served: Served) -> list[Any]:
    with served.store() as store:
        return store.deployment_events("ai4i")


def test_a_worse_candidate_is_rolled_back_with_zero_failed_requests(
    served: Served, rollout_params: None
) -> None:
    from pipelines.rollout import progressive_rollout

    served.reset()
    seen = len(_audit(served))
    params = load_params(served.ws.params_path)
    with Load(served) as load, served.store() as store:
        result = progressive_rollout(served.ws, store, params, served.noise.ref, say=print)
    assert result.outcome == "rolled_back", result
    assert len(result.steps) == 1 and result.steps[0].share == STEPS[0]
    step = result.steps[0]
    assert step.canary_requests >= 60 and step.worse
    assert step.disagreement_rate > 0.25 or (
        step.canary_estimate is not None
        and step.production_estimate is not None
        and step.production_estimate - step.canary_estimate > 0.05
    )
    assert load.statuses and set(load.statuses) == {200}, "a client request failed"
    with served.store() as store:
        state = store.deployment_state("ai4i")
        assert state is not None and state.canary_version_id is None
        assert store.production_model("ai4i").id == served.good.id
    # the audit has the step and the rollback, with its numbers
    new = _audit(served)[seen:]
    assert [e.action for e in new] == ["canary", "clear"]
    assert new[-1].reason.startswith("rollback: ") and "disagreement_rate" in new[-1].reason


def test_a_good_candidate_is_promoted_step_by_step(served: Served, rollout_params: None) -> None:
    from pipelines.rollout import progressive_rollout

    served.reset()
    seen = len(_audit(served))
    params = load_params(served.ws.params_path)
    with Load(served) as load, served.store() as store:
        result = progressive_rollout(served.ws, store, params, served.spare.ref, say=print)
    assert result.outcome == "promoted", result
    assert [s.share for s in result.steps] == STEPS and not any(s.worse for s in result.steps)
    assert set(load.statuses) == {200}
    new = _audit(served)[seen:]
    assert [(e.action, e.share) for e in new if e.action == "canary"] == [
        ("canary", s) for s in STEPS
    ]
    assert new[-1].action == "promote"
    with served.store() as store:
        assert store.production_model("ai4i").id == served.spare.id
