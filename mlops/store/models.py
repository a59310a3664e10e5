"""SQLAlchemy 2 typed models of the metadata store.

Every production model traces back to its data through these tables:
batch -> validation -> (training run) -> model version -> deployment -> drift report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    """A named data set and its spec (target, features, ids, excluded columns)."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    task: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Batch(Base):
    """One ingested, DVC-tracked batch of data. Its id is derived from its bytes."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    source: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    dvc_md5: Mapped[str] = mapped_column(String(64), index=True)
    rows: Mapped[int] = mapped_column(Integer)
    schema_hash: Mapped[str] = mapped_column(String(64))
    # ingested -> passed | warned | failed | quarantined
    status: Mapped[str] = mapped_column(String(32), default="ingested")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    validations: Mapped[list[Validation]] = relationship(
        back_populates="batch", order_by="Validation.id"
    )


class Validation(Base):
    """The result of running a batch's expectation suite."""

    __tablename__ = "validations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    suite: Mapped[str] = mapped_column(String(128))
    success: Mapped[bool] = mapped_column(Boolean)
    policy: Mapped[str] = mapped_column(String(32))
    # passed | warned | failed | quarantined: what the policy made of the result
    outcome: Mapped[str] = mapped_column(String(32))
    evaluated: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[list[Any]] = mapped_column(default=list)
    docs_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    batch: Mapped[Batch] = relationship(back_populates="validations")


class TrainingRun(Base):
    """One training run: parameters, data, environment and outcome."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    status: Mapped[str] = mapped_column(String(32), default="running")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    batch_ids: Mapped[list[Any]] = mapped_column(default=list)
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dvc_lock_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ModelVersion(Base):
    """A registered model: its artifacts, metrics, stage and lineage."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    # candidate -> staging | rejected; staging -> production -> archived
    stage: Mapped[str] = mapped_column(String(32), default="candidate")
    runtime: Mapped[str] = mapped_column(String(32), default="torch")
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    decision: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[TrainingRun | None] = relationship()
    batches: Mapped[list[Batch]] = relationship(secondary="model_version_batches")


class ModelVersionBatch(Base):
    """Which batches a model version was trained on."""

    __tablename__ = "model_version_batches"

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)


class StageEvent(Base):
    """Append-only audit of every model stage change."""

    __tablename__ = "stage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    from_stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    to_stage: Mapped[str] = mapped_column(String(32))
    # register | gate | promote | archive | override | rollback (see Store.set_stage)
    action: Mapped[str] = mapped_column(String(32), default="", server_default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Deployment(Base):
    """Append-only audit of every traffic change (rollout, canary, shadow, rollback)."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    environment: Mapped[str] = mapped_column(String(64), default="default")
    action: Mapped[str] = mapped_column(String(32))
    traffic: Mapped[float] = mapped_column(Float, default=1.0)
    actor: Mapped[str] = mapped_column(String(128), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DriftReport(Base):
    """An Evidently drift report on served traffic."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True, index=True
    )
    reference: Mapped[str] = mapped_column(Text, default="")
    rows: Mapped[int] = mapped_column(Integer, default=0)
    drift_share: Mapped[float] = mapped_column(Float, default=0.0)
    drifted: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)  # the HTML report
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The monitor's summary (0005): which model and window, quality estimated without labels
    # and realized from the labels that arrived, the alerts sent, the JSON report.
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    estimated: Mapped[dict[str, Any] | None] = mapped_column(nullable=True, default=dict)
    realized: Mapped[dict[str, Any] | None] = mapped_column(nullable=True, default=dict)
    alerts: Mapped[list[Any] | None] = mapped_column(nullable=True, default=list)
    json_path: Mapped[str | None] = mapped_column(Text, nullable=True)


class DriftEvent(Base):
    """A drift alert and what it caused: `retrain` (the loop started one; `flow_run_id` once
    the run claims it) or `suppressed` (a retrain in its cooldown, or the cap reached)."""

    __tablename__ = "drift_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    drift_report_id: Mapped[int | None] = mapped_column(
        ForeignKey("drift_reports.id"), nullable=True
    )
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelAlias(Base):
    """A named pointer per model name (production, staging, canary, shadow): at most one
    version each, enforced by the unique constraint."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_name", "alias", name="uq_model_aliases_name_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class DeploymentState(Base):
    """What serves what, per model name: changed only through the store's API, under the
    name's lock, with its audit row. `revision` counts the changes: a server polls it."""

    __tablename__ = "deployment_states"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    production_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    canary_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    canary_share: Mapped[float] = mapped_column(Float, default=0.0)
    shadow_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class DeploymentEvent(Base):
    """Append-only audit of deployment state: one row per change, with the revision it made."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    # promote | canary | shadow | rollback | override | clear
    action: Mapped[str] = mapped_column(String(32))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    share: Mapped[float | None] = mapped_column(Float, nullable=True)
    revision: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Package(Base):
    """A version's BentoML model-store entry and the bento built around it: one per version,
    so packaging twice reuses both."""

    __tablename__ = "packages"

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    model_tag: Mapped[str] = mapped_column(String(256))
    bento_tag: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Review(Base):
    """A served request on which production and a canary or shadow version disagreed, waiting
    for an engineer's decision."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    record: Mapped[int] = mapped_column(Integer, default=0)  # index in the request's records
    route: Mapped[str] = mapped_column(String(16))  # shadow | canary
    production_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    other_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    production_output: Mapped[dict[str, Any]] = mapped_column(default=dict)
    other_output: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(128), default="")


class Label(Base):
    """A ground-truth label for one served record, joined to the prediction log by request id
    and record index: from a resolved review or from feedback."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("request_id", "record", name="uq_labels_request_record"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    record: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[str] = mapped_column(Text)  # as the data set writes it; parsed by the reader
    source: Mapped[str] = mapped_column(String(16))  # review | feedback
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
