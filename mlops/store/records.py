"""Plain, detached records the store returns: safe to keep after the session is gone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, TypeVar


class _Record:
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


@dataclass(frozen=True)
class DatasetRecord(_Record):
    name: str
    task: str
    spec: dict[str, Any]
    created_at: datetime
    batches: int  # how many batches it holds
    last_batch_at: datetime | None


@dataclass(frozen=True)
class BatchRecord(_Record):
    id: str
    dataset: str
    source: str
    path: str
    dvc_md5: str
    rows: int
    schema_hash: str
    status: str
    meta: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ValidationRecord(_Record):
    id: int
    batch_id: str
    suite: str
    success: bool
    policy: str
    outcome: str
    evaluated: int
    failures: list[Any]
    docs_path: str | None
    created_at: datetime


@dataclass(frozen=True)
class RunRecord(_Record):
    id: int
    dataset: str
    status: str
    params: dict[str, Any]
    batch_ids: list[Any]
    device: str | None
    git_commit: str | None
    dvc_lock_hash: str | None
    metrics: dict[str, Any]
    duration_s: float | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class ModelRecord(_Record):
    id: int
    name: str
    version: int
    dataset: str
    run_id: int | None
    parent_id: int | None
    stage: str
    runtime: str
    method: dict[str, Any]
    path: str
    metrics: dict[str, Any]
    decision: dict[str, Any]
    lineage: dict[str, Any]
    batch_ids: list[str]
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class StageEventRecord(_Record):
    id: int
    model_version_id: int
    from_stage: str | None
    to_stage: str
    action: str
    reason: str
    actor: str
    created_at: datetime


@dataclass(frozen=True)
class DeploymentRecord(_Record):
    id: int
    model_version_id: int
    environment: str
    action: str
    traffic: float
    actor: str
    note: str
    created_at: datetime


@dataclass(frozen=True)
class DriftRecord(_Record):
    id: int
    model_version_id: int | None
    reference: str
    rows: int
    drift_share: float
    drifted: bool
    details: dict[str, Any]
    path: str | None
    created_at: datetime
    model_name: str | None
    window_start: datetime | None
    window_end: datetime | None
    estimated: dict[str, Any] | None
    realized: dict[str, Any] | None
    alerts: list[Any] | None
    json_path: str | None


@dataclass(frozen=True)
class DriftEventRecord(_Record):
    id: int
    model_name: str
    drift_report_id: int | None
    decision: str
    reason: str
    flow_run_id: str | None
    created_at: datetime


R = TypeVar("R", bound=_Record)


def _to(cls: type[R], row: object, **extra: Any) -> R:
    """Copy an ORM row into a detached record, field by field."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: extra[n] if n in extra else getattr(row, n) for n in names})


@dataclass(frozen=True)
class AliasRecord(_Record):
    model_name: str
    alias: str
    model_version_id: int
    version: int
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class DeploymentStateRecord(_Record):
    model_name: str
    production_version_id: int | None
    canary_version_id: int | None
    canary_share: float
    shadow_version_id: int | None
    revision: int
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class DeploymentEventRecord(_Record):
    id: int
    model_name: str
    action: str
    model_version_id: int | None
    share: float | None
    revision: int
    actor: str
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class PackageRecord(_Record):
    model_version_id: int
    model_tag: str
    bento_tag: str
    created_at: datetime


@dataclass(frozen=True)
class ReviewRecord(_Record):
    id: int
    model_name: str
    request_id: str
    record: int
    route: str
    production_version_id: int
    other_version_id: int
    inputs: dict[str, Any]
    production_output: dict[str, Any]
    other_output: dict[str, Any]
    status: str
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str


@dataclass(frozen=True)
class LabelRecord(_Record):
    id: int
    model_name: str
    request_id: str
    record: int
    value: str
    source: str
    actor: str
    created_at: datetime
