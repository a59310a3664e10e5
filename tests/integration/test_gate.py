"""The promotion gate: worse models are rejected, better ones staged, on the candidate's split."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mlops.params import EvaluateParams, Params
from mlops.settings import Workspace
from mlops.store import BatchRecord, ModelRecord, Store
from pipelines.evaluate import evaluate_predictor, run_evaluate_stage
from pipelines.ingest import ingest, load_source
from pipelines.model import load_predictor
from pipelines.prepare import PreparedData, prepare, save_prepared
from pipelines.registry import Artifacts, _beats, gate, promote, register_candidate
from pipelines.sources import AI4I_SPEC
from pipelines.train import run_train_stage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARAMS = Params.model_validate(
    {"train": {"epochs": 8, "hidden": [32, 32], "device": "cpu", "patience": 8}}
)


def _batch(ws: Workspace, store: Store, rows: int, seed: int) -> tuple[BatchRecord, object]:
    loaded = load_source(ws, "ai4i", rows=rows, seed=seed)
    batch = ingest(ws, store, loaded).batch
    store.add_validation(
        batch_id=batch.id,
        suite="test",
        success=True,
        policy="block",
        outcome="passed",
        evaluated=0,
        failures=[],
        docs_path=None,
    )
    return batch, loaded.frame


def shuffled_labels(data: PreparedData, seed: int = 0) -> PreparedData:
    """Test-only: the train split's target permuted, so the model learns noise."""
    target = data.spec.target
    noise = np.random.default_rng(seed).permutation(data.train[target].to_numpy())
    return replace(data, train=data.train.assign(**{target: noise}))


def _candidate(
    ws: Workspace,
    store: Store,
    data: PreparedData,
    batches: list[BatchRecord],
    where: Path,
    *,
    shuffle: int | None = None,
) -> ModelRecord:
    """What `dvc repro` would leave in artifacts/, built in-process, then registered.

    With `shuffle`, the network (only) learns from permuted labels; the saved splits and the
    baseline keep the true ones, so the comparison is fair.
    """
    art = Artifacts(where)
    save_prepared(data, art.prepared)
    train_on = shuffled_labels(data, shuffle) if shuffle is not None else data
    run_train_stage(
        train_on,
        PARAMS.train,
        model_dir=art.model,
        curve_csv=art.plots / "curve.csv",
        curve_png=art.train_curve_png,
        info_path=art.train_info,
        checkpoint_dir=None,
        progress=False,
    )
    run_evaluate_stage(art.prepared, art.model, art.metrics, art.plots, PARAMS.evaluate)
    return register_candidate(ws, store, artifacts=art, params=PARAMS, batches=batches)


def test_gate_rejects_worse_stages_better_on_the_candidates_split(
    ws: Workspace, tmp_path: Path
) -> None:
    store = Store.open(ws.database_url)
    b1, f1 = _batch(ws, store, 3000, seed=11)
    b2, f2 = _batch(ws, store, 2000, seed=12)
    only_first = prepare({b1.id: f1}, AI4I_SPEC, PARAMS.prepare)
    both = prepare({b1.id: f1, b2.id: f2}, AI4I_SPEC, PARAMS.prepare)

    # 1. noise, no production yet: judged against the baseline, and rejected
    noise = _candidate(ws, store, only_first, [b1], tmp_path / "a", shuffle=0)
    noise = gate(ws, store, noise, PARAMS.evaluate)
    assert noise.stage == "rejected"
    d = noise.decision
    assert d["against"] == "baseline" and d["passed"] is False
    assert d["candidate"] < d["reference"] and d["metric"] == "pr_auc"

    # 2. make the noise model production (test setup), then train a real one on more data
    store.set_stage(noise.id, "production", reason="test setup")
    good = _candidate(ws, store, both, [b1, b2], tmp_path / "b")
    good = gate(ws, store, good, PARAMS.evaluate)
    assert good.stage == "staging", good.decision
    d = good.decision
    assert d["against"] == "production" and d["against_ref"] == noise.ref and d["passed"]
    # production was scored on the candidate's test split, not on its own
    test_file = Path(good.path) / "prepared" / "test.parquet"
    assert d["test_split"]["md5"] == hashlib.md5(test_file.read_bytes()).hexdigest()
    assert d["test_split"]["rows"] == len(both.test) != len(only_first.test)
    prod_on_new_split = evaluate_predictor(load_predictor(Path(noise.path) / "model"), both.test)
    assert d["reference"] == pytest.approx(prod_on_new_split["pr_auc"])
    assert d["reference"] != pytest.approx(noise.metrics["pr_auc"])

    # 3. a release manager promotes it: the old production is archived, one production remains
    promote(store, good.ref, "production", reason="release 1", actor="rm")
    assert [m.ref for m in store.list_models(stage="production")] == [good.ref]
    assert store.get_model(noise.ref).stage == "archived"

    # 4. noise again, now against a real production model: rejected with the numbers
    worse = _candidate(ws, store, both, [b1, b2], tmp_path / "c", shuffle=1)
    worse = gate(ws, store, worse, PARAMS.evaluate)
    assert worse.stage == "rejected"
    assert worse.decision["against_ref"] == good.ref
    assert worse.decision["delta"] < 0 and "does not beat" in worse.decision["reason"]
    assert store.production_model("ai4i").ref == good.ref  # untouched
    store.close()


def test_margin_and_promotion_rules(ws: Workspace, tmp_path: Path, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    store = Store.open(ws.database_url)
    b1, f1 = _batch(ws, store, 3000, seed=11)
    data = prepare({b1.id: f1}, AI4I_SPEC, PARAMS.prepare)
    cand = _candidate(ws, store, data, [b1], tmp_path / "a")
    # the same model is good enough against the baseline, but not by a margin of 1.0 PR-AUC
    strict = gate(ws, store, cand, EvaluateParams(margin=1.0))
    assert strict.stage == "rejected" and strict.decision["margin"] == 1.0
    store.close()

    # only a staging version goes to production; a person may overrule via staging, on record
    res = mlops_cli("-w", ws.root, "models", "promote", cand.ref, "--to", "production")
    assert res.exit_code == 2 and "only a staging version" in res.stderr
    res = mlops_cli(
        "-w",
        ws.root,
        "models",
        "promote",
        cand.ref,
        "--to",
        "staging",
        "--reason",
        "overruled: margin too strict",
    )
    assert res.exit_code == 0, res.stderr
    res = mlops_cli("-w", ws.root, "models", "promote", cand.ref, "--to", "production")
    assert res.exit_code == 0 and "staging -> production" in res.stdout
    store = Store.open(ws.database_url)
    history = [(e.from_stage, e.to_stage) for e in store.stage_history(cand.ref)]
    assert history == [
        (None, "candidate"),
        ("candidate", "rejected"),
        ("rejected", "staging"),
        ("staging", "production"),
    ]
    store.close()


@pytest.mark.parametrize(
    ("cand", "ref", "higher", "margin", "passed"),
    [
        (0.8, 0.7, True, 0.0, True),
        (0.7, 0.7, True, 0.0, False),
        (0.75, 0.7, True, 0.1, False),
        (1.0, 2.0, False, 0.0, True),
        (2.0, 2.0, False, 0.0, False),
        (1.5, 2.0, False, 0.6, False),
    ],
)
def test_beats(cand: float, ref: float, higher: bool, margin: float, passed: bool) -> None:
    assert _beats(cand, ref, higher, margin) is passed
