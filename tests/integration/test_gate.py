"""The promotion gate: worse models are rejected, better ones staged, on the candidate's split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mlops.params import EvaluateParams, Params
from mlops.settings import Workspace
from mlops.store import BatchRecord, ModelRecord, Store
from pipelines.artifact import file_hashes
from pipelines.evaluate import evaluate_predictor, run_evaluate_stage
from pipelines.gate import gate, improvement, promote
from pipelines.ingest import ingest, load_source
from pipelines.model import load_predictor
from pipelines.pipeline import Artifacts
from pipelines.prepare import PreparedData, prepare, save_prepared
from pipelines.registry import register_candidate
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
    store.set_stage(noise.id, "production", action="override", reason="test setup")
    good = _candidate(ws, store, both, [b1, b2], tmp_path / "b")
    good = gate(ws, store, good, PARAMS.evaluate)
    assert good.stage == "staging", good.decision
    d = good.decision
    assert d["against"] == "production" and d["against_ref"] == noise.ref and d["passed"]
    # against production the rule is statistical: the interval's lower bound clears the margin
    assert d["rule"] == "significant" and d["interval"][0] > d["margin"]
    # production was scored on the candidate's test split, not on its own
    test_file = ws.version_dir(good.path) / "prepared" / "test.parquet"
    assert d["test_split"]["md5"] == hashlib.md5(test_file.read_bytes()).hexdigest()
    assert d["test_split"]["rows"] == len(both.test) != len(only_first.test)
    prod_on_new_split = evaluate_predictor(
        load_predictor(ws.version_dir(noise.path) / "model"), both.test
    )
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
    assert worse.decision["delta"] < 0 and "not above the margin" in worse.decision["reason"]
    assert store.production_model("ai4i").ref == good.ref  # untouched
    store.close()


def test_margin_and_promotion_rules(ws: Workspace, tmp_path: Path, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    store = Store.open(ws.database_url)
    b1, f1 = _batch(ws, store, 3000, seed=11)
    data = prepare({b1.id: f1}, AI4I_SPEC, PARAMS.prepare)
    cand = _candidate(ws, store, data, [b1], tmp_path / "a")
    # the same model is no worse than the baseline, but not better by a margin of 1.0 PR-AUC
    strict = gate(ws, store, cand, EvaluateParams(rule="significant", margin=1.0))
    assert strict.stage == "rejected" and strict.decision["margin"] == 1.0
    store.close()

    # only what the gate staged goes to production; a person may overrule, on record
    res = mlops_cli("-w", ws.root, "models", "promote", cand.ref, "--to", "production")
    assert res.exit_code == 2 and "the gate did not stage it" in res.stderr
    staged = ("models", "promote", cand.ref, "--to", "staging", "--reason", "margin too strict")
    res = mlops_cli("-w", ws.root, *staged)
    assert res.exit_code == 2 and "--override --reason" in res.stderr
    res = mlops_cli("-w", ws.root, "models", "promote", cand.ref, "--to", "staging", "--override")
    assert res.exit_code == 2 and "an override needs a reason" in res.stderr
    res = mlops_cli("-w", ws.root, *staged, "--override")
    assert res.exit_code == 0, res.stderr
    res = mlops_cli("-w", ws.root, "models", "promote", cand.ref, "--to", "production")
    assert res.exit_code == 0 and "staging -> production" in res.stdout
    # what serves what: the production alias and the deployment state, with who and when
    (alias,) = json.loads(mlops_cli("-w", ws.root, "models", "aliases", "--json").stdout)
    assert (alias["alias"], alias["model_version_id"]) == ("production", cand.id)
    (state,) = json.loads(mlops_cli("-w", ws.root, "status", "--json").stdout)
    assert state["production_version_id"] == cand.id and state["revision"] == 1
    assert state["last_event"]["action"] == "promote" and state["updated_by"]
    shown = mlops_cli("-w", ws.root, "status")
    assert shown.exit_code == 0 and cand.ref in shown.stdout
    store = Store.open(ws.database_url)
    history = [(e.from_stage, e.to_stage, e.action) for e in store.stage_history(cand.ref)]
    assert history == [
        (None, "candidate", "register"),
        ("candidate", "rejected", "gate"),
        ("rejected", "staging", "override"),
        ("staging", "production", "promote"),
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
def test_improvement_points_the_right_way(
    cand: float, ref: float, higher: bool, margin: float, passed: bool
) -> None:
    assert (improvement(cand, ref, higher) > margin) is passed


def _perturbed_copy(
    ws: Workspace, store: Store, prod: ModelRecord, where: Path, seed: int
) -> ModelRecord:
    """Production's own model with its first layer nudged: the same model, give or take noise."""
    import shutil

    import torch

    shutil.copytree(ws.version_dir(prod.path), where)
    weights = where / "model" / "weights.pt"
    state = torch.load(weights, weights_only=True)
    first = sorted(k for k in state if k.endswith(".weight"))[0]
    g = torch.Generator().manual_seed(seed)
    state[first] = state[first] + 0.01 * torch.randn(state[first].shape, generator=g)
    torch.save(state, weights)
    # a new model, so a new manifest: its checksums must describe these weights
    manifest = json.loads((where / "model" / "manifest.json").read_text())
    manifest["files"] = file_hashes(where / "model")
    (where / "model" / "manifest.json").write_text(json.dumps(manifest))
    return store.register_model(
        name=prod.name, dataset=prod.dataset, path=str(where), metrics=prod.metrics,
        lineage=prod.lineage, batch_ids=prod.batch_ids,
    )  # fmt: skip


def test_within_noise_is_not_staged_under_significant_but_clearly_better_is(
    ws: Workspace, tmp_path: Path, mlops_cli
) -> None:  # type: ignore[no-untyped-def]
    store = Store.open(ws.database_url)
    b1, f1 = _batch(ws, store, 4000, seed=21)
    data = prepare({b1.id: f1}, AI4I_SPEC, PARAMS.prepare)
    weak = _candidate(ws, store, data, [b1], tmp_path / "weak", shuffle=3)
    store.set_stage(weak.id, "production", action="override", reason="test setup")
    prod = gate(ws, store, _candidate(ws, store, data, [b1], tmp_path / "prod"), PARAMS.evaluate)
    assert prod.stage == "staging" and prod.decision["rule"] == "significant"  # clearly better
    promote(store, prod.ref, "production", reason="release", actor="rm")

    # a copy of production, nudged until its point value is (by a hair) better
    for seed in range(20):
        copy = _perturbed_copy(ws, store, prod, tmp_path / f"copy-{seed}", seed)
        decided = gate(ws, store, copy, PARAMS.evaluate)
        if decided.decision["improvement"] > 0:
            break
        store.set_stage(copy.id, "archived", action="archive", reason="test: not better")
    d = decided.decision
    assert d["improvement"] > 0 and d["against_ref"] == prod.ref
    low, high = d["interval"]
    assert low < 0 < high  # within noise ...
    assert decided.stage == "rejected" and "significant rule" in d["reason"]  # ... so not staged
    # the point rule would have staged it: that is the churn the interval prevents
    again = _perturbed_copy(ws, store, prod, tmp_path / "copy-point", seed)
    point = gate(ws, store, again, PARAMS.evaluate.model_copy(update={"rule": "point"}))
    assert point.stage == "staging" and point.decision["rule"] == "point"
    shown = json.loads(mlops_cli("-w", ws.root, "models", "show", decided.ref, "--json").stdout)
    assert shown["decision"]["interval"] == [low, high]
    assert shown["decision"]["confidence"] == 0.95
    store.close()


def test_too_few_rows_is_inconclusive_and_a_rejected_parents_child_is_rejected(
    ws: Workspace, tmp_path: Path
) -> None:
    store = Store.open(ws.database_url)
    b1, f1 = _batch(ws, store, 3000, seed=31)
    data = prepare({b1.id: f1}, AI4I_SPEC, PARAMS.prepare)
    cand = _candidate(ws, store, data, [b1], tmp_path / "a")
    strict = PARAMS.evaluate.model_copy(update={"min_test_rows": 10_000})
    thin = gate(ws, store, cand, strict)
    assert thin.stage == "candidate"  # never a silent pass: it waits for a person
    d = thin.decision
    assert d["outcome"] == "inconclusive" and "too little evidence" in d["reason"]
    assert d["test_split"]["rows"] == len(data.test) and d["test_split"]["positives"] > 0

    rejected = gate(
        ws, store, cand, PARAMS.evaluate.model_copy(update={"rule": "significant", "margin": 1.0})
    )
    assert rejected.stage == "rejected"
    child = store.register_model(
        name=cand.name, dataset=cand.dataset, path=cand.path, metrics=cand.metrics,
        lineage=cand.lineage, batch_ids=cand.batch_ids, parent_id=cand.id,
        method={"kind": "compress"},
    )  # fmt: skip
    child = gate(ws, store, child, PARAMS.evaluate)
    assert child.stage == "rejected"
    assert child.decision["reason"] == f"its parent {cand.ref} was rejected"
    store.close()
