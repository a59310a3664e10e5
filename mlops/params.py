"""Typed parameters: `params.yaml` has one section per stage; this module validates them.

Load once at an entry point (`load_params`) and pass the section objects down; library code
never opens `params.yaml` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mlops.errors import MlopsError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(_Section):
    source: str = "ai4i"
    rows: int = Field(10_000, gt=0)
    seed: int = 1
    drift: str = ""


Policy = Literal["block", "quarantine", "warn"]


class ValidateParams(_Section):
    policy: Policy = "block"
    min_rows: int = Field(100, ge=1)
    max_rows: int = Field(10_000_000, ge=1)


class PrepareParams(_Section):
    dataset: str = "ai4i"
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = 42


class TrainParams(_Section):
    # Hidden layer widths; [] is a linear model (logistic or linear regression).
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    dropout: float = Field(0.1, ge=0, lt=1)
    lr: float = Field(0.003, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(256, gt=0)
    epochs: int = Field(40, gt=0)
    patience: int = Field(6, gt=0)
    warmup_epochs: int = Field(1, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    class_weighting: bool = True
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    # CPU threads for training; 0 keeps torch's default. A small MLP's steps are too short to
    # split: more threads mostly wait on each other, and a fixed count keeps results repeatable.
    cpu_threads: int = Field(1, ge=0)
    # Processes for torch DDP (`mlops stage train` starts them with torch.distributed.run;
    # gloo on CPU, NCCL with one GPU each); each trains on its share of every batch.
    nproc: int = Field(1, ge=1)
    # Candidate configurations, each a mapping of train.* overrides, e.g. [{hidden: []},
    # {hidden: [64, 64]}]: `mlops train` trains every one, keeps the best on the validation
    # split and writes its values here. [] trains these parameters as they are.
    search: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w <= 0 for w in v):
            raise ValueError("hidden layer widths must be positive ([] for a linear model)")
        return v

    @field_validator("search")
    @classmethod
    def _candidates(cls, v: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        """Each candidate must be a valid train section once applied: checked now, not after
        the first candidates have trained."""
        for i, candidate in enumerate(v):
            if not candidate:
                raise ValueError(f"candidate {i} is empty: give train.* keys, e.g. {{hidden: []}}")
            if "search" in candidate:
                raise ValueError(f"candidate {i}: a candidate cannot hold a search")
            try:
                TrainParams.model_validate({**info.data, **candidate})
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"candidate {i}: {loc}: {err['msg']}") from None
        return v

    def candidate(self, overrides: dict[str, Any]) -> TrainParams:
        """These parameters with one search candidate's overrides, and no search."""
        return TrainParams.model_validate(
            {**self.model_dump(exclude={"search"}), **overrides, "search": []}
        )


class EvaluateParams(_Section):
    primary_metric_classification: Literal["pr_auc", "roc_auc", "f1"] = "pr_auc"
    primary_metric_regression: Literal["rmse", "mae", "r2"] = "rmse"
    # A challenger must beat production by at least this much.
    margin: float = Field(0.0, ge=0)
    # A first model (no production yet) must be no worse than the linear baseline by more
    # than this: in metric units for bounded metrics (pr_auc, roc_auc, f1, r2) ...
    noninferiority_margin: float = Field(0.01, ge=0)
    # ... and as a share of the baseline's error for rmse and mae.
    noninferiority_relative: float = Field(0.02, ge=0)
    # significant: the 95% paired-bootstrap interval's lower bound must clear the margin;
    # noninferior: it must clear minus the non-inferiority margin; point: the point
    # improvement must clear the margin. auto: significant against production, noninferior
    # against the baseline, point within its tolerance against a compressed child's parent.
    rule: Literal["auto", "significant", "noninferior", "point"] = "auto"
    bootstrap_samples: int = Field(1000, ge=100)
    # Fewer test rows (or, for a binary target, positives) than this: "inconclusive".
    min_test_rows: int = Field(50, ge=1)
    min_positives: int = Field(10, ge=1)
    seed: int = 0


class CompressParams(_Section):
    # Largest allowed drop of the primary metric, in points (0.5 points = 0.005).
    max_quality_drop: float = Field(0.005, ge=0)
    prune_amount: float = Field(0.5, gt=0, lt=1)
    finetune_epochs: int = Field(3, ge=0)
    student_hidden: list[int] = Field(default_factory=lambda: [16])
    distill_temperature: float = Field(2.0, gt=0)
    distill_alpha: float = Field(0.5, ge=0, le=1)
    distill_epochs: int = Field(30, gt=0)
    latency_repeats: int = Field(200, gt=0)
    # Structured pruning ranks hidden units by this norm of their weights in and out.
    prune_norm: Literal["l1", "l2"] = "l2"
    distill_lr: float = Field(0.003, gt=0, le=1)
    finetune_lr: float = Field(0.001, gt=0, le=1)
    batch_size: int = Field(256, gt=0)
    seed: int = 0
    # Weight the label term by inverse class frequency, as training does with class_weighting.
    class_weighting: bool = True
    # Classification: the chosen variant must predict the parent's class on this share of rows.
    min_agreement: float = Field(0.99, ge=0, le=1)
    # Regression: a prediction "agrees" within this many target standard deviations ...
    regression_agreement: float = Field(0.05, gt=0)
    # ... and the chosen variant must agree with the parent on this share of rows,
    regression_min_agreement: float = Field(0.95, ge=0, le=1)
    # and lose at most this fraction of the parent's metric (0.02: RMSE up by at most 2%).
    regression_relative_drop: float = Field(0.02, ge=0)


class ServeParams(_Section):
    """`mlops serve`: the BentoML service's settings (read by each worker at start-up)."""

    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(2, ge=1)
    # How often each worker reads the deployment revision (one primary-key read).
    poll_s: float = Field(1.0, gt=0)
    # Records per request, and bytes per request body: more gets a 4xx.
    max_records: int = Field(1000, ge=1)
    max_body_bytes: int = Field(4_000_000, ge=1024)
    # Requests waiting while a batch runs are merged, up to this many records.
    max_batch_records: int = Field(512, ge=1)
    # Prediction log: buffered in memory, written as Parquet every flush_s seconds or as
    # soon as flush_rows rows wait, whichever comes first.
    log_flush_s: float = Field(5.0, gt=0)
    log_flush_rows: int = Field(10_000, gt=0)
    # Regression: canary/shadow and production "disagree" beyond this many target std.
    review_tolerance: float = Field(0.5, gt=0)
    # The lifecycle flow: build a bento when it packages, and start the service once to check
    # that the first production version answers.
    bento: bool = True
    check: bool = True


class MonitorParams(_Section):
    """`mlops monitor`: the reference, the window and the alert thresholds."""

    # Rows of the serving version's data kept as the reference (held-out rows first: the
    # performance estimate calibrates on rows the model never trained on).
    reference_rows: int = Field(20_000, ge=100)
    window_rows: int = Field(5_000, ge=1)  # the window without --since or --last
    min_rows: int = Field(100, ge=1)  # fewer rows in the window: no report
    # Drift tests on more rows than this run on a random sample of this size (the report says
    # so): on 10^5 rows a test flags differences too small to matter, and takes longer.
    max_rows: int = Field(20_000, ge=100)
    min_labels: int = Field(50, ge=1)  # fewer labelled rows in a window: no realized quality
    seed: int = 0
    # Alerts: any one crossed sends mlops.drift.detected and the webhook message.
    alert_drift_share: float = Field(0.3, gt=0, le=1)
    alert_columns: list[str] = Field(default_factory=list)
    alert_metric_drop: float = Field(0.05, ge=0)
    # `mlops run`'s monitor step: this many records of traffic sent to the service, from the
    # built-in source with this drift scenario (a user's data set: a sample of its newest
    # batch, as it is), then one monitor run on them. 0: no monitor step.
    demo_rows: int = Field(2_000, ge=0)
    demo_drift: str = "ambient_shift_k=3"


class LoopParams(_Section):
    """The closed loop: what a drift alert may start, and how often."""

    # A drift alert starts a retrain unless one started within cooldown_s (the Prefect
    # trigger's `within` too), or max_retrains started within window_s.
    cooldown_s: float = Field(3600.0, ge=0)
    max_retrains: int = Field(3, ge=1)
    window_s: float = Field(86400.0, gt=0)
    # `mlops schedule retrain|monitor --cron ...|--every ...` writes these (a deployment has a
    # cron line or an interval, not both); `mlops worker` applies them.
    retrain_cron: str = ""
    monitor_cron: str = ""
    retrain_every_s: float = Field(0.0, ge=0)  # 0: no interval schedule
    monitor_every_s: float = Field(0.0, ge=0)
    # `mlops schedule list`: a run due longer ago than this that did not start (or was never
    # created) reports its schedule as not firing.
    schedule_grace_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _one_schedule_each(self) -> LoopParams:
        for what in ("retrain", "monitor"):
            if getattr(self, f"{what}_cron") and getattr(self, f"{what}_every_s"):
                raise ValueError(f"{what}_cron and {what}_every_s are both set: keep one")
        return self


class RolloutParams(_Section):
    """Progressive delivery: canary steps and what counts as worse than production."""

    steps: list[float] = Field(default_factory=lambda: [0.1, 0.5])
    min_requests: int = Field(200, ge=1)  # canary requests per step before judging it
    step_timeout_s: float = Field(600.0, gt=0)  # fewer requests by then: rolled back
    max_error_rate: float = Field(0.01, ge=0, le=1)  # the canary's failed attempts per request
    max_p99_ratio: float = Field(1.5, ge=1)  # canary p99 <= ratio x production p99 + slack
    p99_slack_ms: float = Field(5.0, ge=0)
    max_disagreement: float = Field(0.2, ge=0, le=1)  # records answered otherwise than production
    max_metric_drop: float = Field(0.05, ge=0)  # estimated primary metric below production's
    auto: bool = True  # the retrain flow rolls a staged version out (when a server answers)

    @field_validator("steps")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < s < 1 for s in v) or v != sorted(v):
            raise ValueError("rollout steps are increasing shares between 0 and 1, e.g. [0.1, 0.5]")
        return v


class Params(_Section):
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    compress: CompressParams = CompressParams()
    serve: ServeParams = ServeParams()
    monitor: MonitorParams = MonitorParams()
    loop: LoopParams = LoopParams()
    rollout: RolloutParams = RolloutParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.lr=0.01", "train.hidden=[32,32]"]` -> nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise MlopsError(f"--set {item!r}: expected section.key=value (e.g. train.lr=0.01)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:  # `loop.monitor_cron=* * * * *`: not YAML, meant as text
            parsed = value
        out.setdefault(parts[0], {})[parts[1]] = parsed
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


def validate_params(raw: dict[str, Any], where: str) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise MlopsError(f"{where}: {loc}: {err['msg']} (got {err.get('input')!r})") from None


def read_params_file(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise MlopsError(f"no params file at {path}") from None
    except yaml.YAMLError as exc:
        raise MlopsError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise MlopsError(f"{path} must be a mapping of sections")
    return raw


Overrides = dict[str, dict[str, Any]]


def load_params(path: Path, overrides: list[str] | Overrides | None = None) -> Params:
    """Read, override and validate `params.yaml` into typed sections. `overrides` are `--set`
    strings, or what `parse_overrides` made of them (parse once, pass that down)."""
    parsed = parse_overrides(overrides or []) if isinstance(overrides, list | None) else overrides
    raw = merge(read_params_file(path), parsed)
    return validate_params(raw, str(path.name))
