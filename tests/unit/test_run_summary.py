"""`mlops run`'s closing summary when nothing reached production: no "serve it" for nothing to
serve, the gate's decision in words, and the next step it names."""

from __future__ import annotations

import pytest

from mlops.cli.run import _print_summary
from mlops.settings import Workspace
from mlops.store import Store


def test_a_rejection_names_the_next_step_and_offers_nothing_to_serve(
    ws: Workspace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    decision = {
        "reason": "pr_auc 0.61 vs baseline 0.70: ... (noninferior rule: worse than it)",
        "next": "try the linear family (`--set train.hidden=[]`) or `train.search`",
    }
    with Store.open(ws.database_url) as store:
        store.upsert_dataset("line3", "classification", {"name": "line3", "target": "failed"})
        v = store.register_model(name="line3", dataset="line3", path="models/line3-1")
        store.set_stage(v.id, "rejected", action="gate", reason=decision["reason"],
                        actor="gate", decision=decision)  # fmt: skip
    _print_summary(ws, "line3", {})
    out = capsys.readouterr().out
    assert "none yet for line3: nothing to serve" in out
    assert "line3:1 rejected: pr_auc 0.61 vs baseline 0.70" in out
    assert "next  try the linear family (`--set train.hidden=[]`)" in out
    assert "serve it" not in out and "`mlops serve`" not in out
