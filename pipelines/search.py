"""Search: train each candidate configuration of `train.search` on the same prepared data and
keep the best on the validation split (never the test split: the gate judges on that one).

`train_and_register` runs the search before `dvc repro`: it writes the winner's values into
params.yaml's train section, so the DVC pipeline then trains exactly the winner and dvc.lock
records it. Each candidate is the train section with the candidate's overrides; a candidate
that leaves out a key some other candidate sets gets that key's value from the section as it
was, and the search list is written back so completed: after the train section holds the
winner, a second run searches the very same configurations.

Candidates are scored by a `ScoreMany` function: `score_sequentially` here; the lifecycle flow
passes one that maps a Prefect task over them (on Dask with `--executor dask`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mlops.errors import MlopsError
from mlops.io import atomic_write_json
from mlops.params import EvaluateParams, Params, TrainParams
from mlops.settings import Workspace

# train_model sets process-wide torch state (thread count, deterministic mode, the global RNG
# that initialises weights and drives dropout): two candidates training at once in threads of
# one process would draw from each other's RNG and give other weights than alone. Threads of
# one process take turns; processes (Dask workers) run in parallel.
_TRAINING = threading.Lock()


@dataclass(frozen=True)
class CandidateScore:
    """What training one candidate gave on the validation split."""

    value: float | None  # the primary metric (None: undefined on this split)
    val_loss: float
    best_epoch: int
    epochs_run: int
    duration_s: float
    device: str


ScoreMany = Callable[[Path, Sequence[TrainParams], EvaluateParams], list[CandidateScore]]


@dataclass(frozen=True)
class SearchResult:
    """Every candidate (as completed), its score, and the one chosen."""

    metric: str
    higher_is_better: bool
    candidates: list[dict[str, Any]]
    scores: list[CandidateScore]
    winner: int
    duration_s: float
    cached: bool = False
    key: str = ""

    @property
    def chosen(self) -> dict[str, Any]:
        return self.candidates[self.winner]

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate, in the order params.yaml lists them."""
        return [
            {
                "candidate": i,
                "overrides": _brief(c),
                f"val_{self.metric}": s.value,
                "val_loss": round(s.val_loss, 6),
                "best_epoch": s.best_epoch,
                "epochs_run": s.epochs_run,
                "seconds": round(s.duration_s, 1),
                "chosen": i == self.winner,
            }
            for i, (c, s) in enumerate(zip(self.candidates, self.scores, strict=True))
        ]

    def to_dict(self) -> dict[str, Any]:
        """What lineage keeps (and the cache file holds)."""
        return {
            "metric": self.metric,
            "split": "val",
            "higher_is_better": self.higher_is_better,
            "candidates": self.candidates,
            "scores": [asdict(s) for s in self.scores],
            "winner": self.winner,
            "chosen": self.chosen,
            "duration_s": round(self.duration_s, 3),
            "cached": self.cached,
            "key": self.key,
            "table": self.table(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchResult:
        return cls(
            metric=d["metric"],
            higher_is_better=d["higher_is_better"],
            candidates=d["candidates"],
            scores=[CandidateScore(**s) for s in d["scores"]],
            winner=d["winner"],
            duration_s=d["duration_s"],
            cached=d.get("cached", False),
            key=d.get("key", ""),
        )


def _brief(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())


# -- one candidate (what a Prefect task or a Dask worker runs) -------------------------------


def score_candidate(
    prepared_dir: Path, params: TrainParams, evaluate: EvaluateParams
) -> CandidateScore:
    """Train one configuration on `prepared_dir`'s train split (early-stopping on val, as the
    train stage does) and score it on the val split's primary metric.

    One process whatever `params.nproc` says: the DVC stage retrains the winner with it.
    """
    import torch

    from pipelines.artifact import outputs_to_scores
    from pipelines.evaluate import evaluate_scores, primary_metric
    from pipelines.prepare import load_prepared
    from pipelines.train import split_tensors, train_model

    data = load_prepared(Path(prepared_dir))
    with _TRAINING:
        result = train_model(data, params, checkpoint_dir=None, progress=False)
    pre = data.preprocessor
    x_val, _ = split_tensors(data, "val")
    with torch.no_grad():
        out = result.model(x_val).numpy()
    metrics = evaluate_scores(
        pre.task,
        data.val[pre.target].to_numpy(),
        outputs_to_scores(out, pre),
        pre.classes,
        data.spec.positive_class,
    )
    name, _ = primary_metric(pre.task, evaluate)
    value = metrics.get(name)
    return CandidateScore(
        value=float(value) if value is not None else None,
        val_loss=result.best_val_loss,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        duration_s=result.duration_s,
        device=result.device,
    )


def score_sequentially(
    prepared_dir: Path, candidates: Sequence[TrainParams], evaluate: EvaluateParams
) -> list[CandidateScore]:
    return [score_candidate(prepared_dir, p, evaluate) for p in candidates]


# -- the search ------------------------------------------------------------------------------


def complete_candidates(base: TrainParams) -> list[dict[str, Any]]:
    """`base.search` with every key any candidate sets given to each (from `base` where a
    candidate leaves it out), keys in the order they first appear, values as validated (a
    YAML 1.1 reader takes `1e-05` for a string)."""
    keys = list(dict.fromkeys(k for c in base.search for k in c))
    resolved = [base.candidate(c).model_dump(mode="json") for c in base.search]
    return [{k: r[k] for k in keys} for r in resolved]


def choose(values: Sequence[float | None], higher_is_better: bool) -> int:
    """The best value's index; an undefined value ranks last, and a tie goes to the candidate
    listed first (list the simpler model first to prefer it)."""
    if all(v is None for v in values):
        raise MlopsError(
            "search: the primary metric is undefined on the validation split for every "
            "candidate (too few rows, or a single class there): ingest more data"
        )
    sign = -1.0 if higher_is_better else 1.0
    ranked = [(sign * v, i) for i, v in enumerate(values) if v is not None]
    return min(ranked)[1]


def search_key(
    selection: Path, params: Params, candidates: Sequence[TrainParams], device: str
) -> str:
    """What a search's outcome depends on: the selected batches' bytes (their md5s), the
    prepare parameters, every candidate's full parameters, the device and the metric."""
    from pipelines.evaluate import primary_metric

    spec = json.loads(selection.read_text())
    parts = {
        "selection": spec,
        "prepare": params.prepare.model_dump(mode="json"),
        "candidates": [c.model_dump(mode="json") for c in candidates],
        "device": device,
        "metric": [primary_metric(t, params.evaluate) for t in ("classification", "regression")],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run_search(
    ws: Workspace,
    selection: Path,
    params: Params,
    *,
    score_many: ScoreMany | None = None,
    echo: Callable[[str], None] | None = None,
) -> SearchResult:
    """Prepare the selected batches as the DVC stage would (in a scratch folder), score every
    candidate on them and choose. A search with the same key as an earlier one (same batches,
    parameters and candidates) is answered from its record under MLOPS_HOME/search."""
    from pipelines.evaluate import primary_metric
    from pipelines.prepare import run_prepare_stage
    from pipelines.train import resolve_device

    say = echo or (lambda _msg: None)
    completed = complete_candidates(params.train)
    candidates = [params.train.candidate(c) for c in completed]
    device = resolve_device(params.train.device).type
    key = search_key(selection, params, candidates, device)
    folder = ws.home / "search"
    record = folder / f"{key[:16]}.json"
    if record.is_file():
        found = SearchResult.from_dict(json.loads(record.read_text()))
        say(f"search: {len(completed)} candidates already scored on these data ({record.name})")
        return replace(found, cached=True)

    started = time.perf_counter()
    scratch = folder / f"{key[:16]}-prepared"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        data = run_prepare_stage(ws.root, selection, scratch, params.prepare)
        say(f"search: training {len(candidates)} candidates, scored on the val split")
        scores = (score_many or score_sequentially)(scratch, candidates, params.evaluate)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    metric, higher = primary_metric(data.spec.task, params.evaluate)
    result = SearchResult(
        metric=metric,
        higher_is_better=higher,
        candidates=completed,
        scores=list(scores),
        winner=choose([s.value for s in scores], higher),
        duration_s=time.perf_counter() - started,
        key=key,
    )
    atomic_write_json(record, result.to_dict())
    return result


def winner_overrides(result: SearchResult) -> dict[str, dict[str, Any]]:
    """What goes into params.yaml: the winner's values, and the search list as completed, one
    candidate a line (in flow style, as the file writes lists: `hidden: [64, 64]`)."""
    from ruamel.yaml.comments import CommentedSeq

    values: dict[str, Any] = {k: _flow(v) for k, v in result.chosen.items()}
    values["search"] = CommentedSeq([_flow(c) for c in result.candidates])
    return {"train": values}


def _flow(value: Any) -> Any:
    """Lists and mappings that ruamel writes in flow style; nested ones too."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, list):
        seq = CommentedSeq([_flow(v) for v in value])
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        mapping = CommentedMap((k, _flow(v)) for k, v in value.items())
        mapping.fa.set_flow_style()
        return mapping
    return value
