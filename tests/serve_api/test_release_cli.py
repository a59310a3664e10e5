"""The release manager's commands, as a person types them: package, promote, rollout, rollback."""

from __future__ import annotations

import time

import bentoml
import pytest
from serving_kit import POLL_S, Served, versions_seen
from test_rollout import _cli

from serving.package import bento_store, model_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_package_builds_a_bento_once_and_reuses_it(served: Served) -> None:
    ref = served.spare.ref
    first = _cli(served, "package", ref)
    assert f"packaged {ref}" in first or f"reused {ref}" in first
    with served.store() as store:
        package = store.get_package(ref)
    assert package is not None and package.bento_tag
    bento = bentoml.bentos.get(package.bento_tag, _bento_store=bento_store(served.ws))
    assert [str(m.tag) for m in bento.info.all_models] == [package.model_tag]
    model = bentoml.models.get(package.model_tag, _model_store=model_store(served.ws))
    labels = model.info.labels
    assert labels["version"] == str(served.spare.version) and labels["runtime"] == "torch"
    assert labels["primary_metric"] == "pr_auc" and len(labels["data_hash"]) == 16
    started = time.monotonic()
    again = _cli(served, "package", ref)
    assert f"reused {ref}" in again and package.bento_tag in again
    assert time.monotonic() - started < 15  # no second build


def test_rollout_promote_and_rollback_commands(served: Served) -> None:
    served.reset()
    noise = served.noise.ref
    assert "takes 20% of traffic" in _cli(served, "rollout", noise, "--canary", "20")
    with served.store() as store:
        state = store.deployment_state("ai4i")
        assert state and state.canary_version_id == served.noise.id and state.canary_share == 0.2
    assert "canary cleared" in _cli(served, "rollout", "ai4i", "--clear", "canary")
    assert "shadows production" in _cli(served, "rollout", noise, "--shadow")
    assert "shadow cleared" in _cli(served, "rollout", "ai4i", "--clear", "shadow")
    assert f"{noise} is production (was {served.good.ref}" in _cli(served, "promote", noise)
    time.sleep(2 * POLL_S + 0.5)
    assert versions_seen(served, 20) == {noise}
    out = _cli(served, "rollback")
    assert f"{served.good.ref} in production" in out
    time.sleep(2 * POLL_S + 0.5)
    assert versions_seen(served, 20) == {served.good.ref}
    served.reset()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["rollout", "ai4i:2", "--canary", "150"], "between 0 and 100"),
        (["rollout", "ai4i:2", "--canary", "10", "--shadow"], "exactly one of"),
        (["rollout", "ai4i:2"], "exactly one of"),
        (["rollout", "ai4i", "--clear", "everything"], "canary or shadow"),
        (["promote", "ai4i:99"], "ai4i:99"),
        (["review", "resolve", "999999", "--label", "1"], "no review 999999"),
    ],
)
def test_release_mistakes_are_one_line_errors(served: Served, args: list[str], error: str) -> None:
    out = _cli(served, *args, check=False)
    assert error in out, out
    assert "Traceback" not in out
