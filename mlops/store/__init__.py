"""The metadata store: one home for every record, and the only code that speaks SQL."""

from mlops.store.api import Store
from mlops.store.records import (
    AliasRecord,
    BatchRecord,
    DatasetRecord,
    DeploymentEventRecord,
    DeploymentRecord,
    DeploymentStateRecord,
    DriftEventRecord,
    DriftRecord,
    LabelRecord,
    ModelRecord,
    PackageRecord,
    ReviewRecord,
    RunRecord,
    StageEventRecord,
    ValidationRecord,
)

__all__ = [
    "AliasRecord",
    "BatchRecord",
    "DatasetRecord",
    "DeploymentEventRecord",
    "DeploymentRecord",
    "DeploymentStateRecord",
    "DriftEventRecord",
    "DriftRecord",
    "LabelRecord",
    "ModelRecord",
    "PackageRecord",
    "ReviewRecord",
    "RunRecord",
    "StageEventRecord",
    "Store",
    "ValidationRecord",
]
