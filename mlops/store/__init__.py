"""The metadata store: one home for every record, and the only code that speaks SQL."""

from mlops.store.api import Store
from mlops.store.records import (
    BatchRecord,
    DatasetRecord,
    DeploymentRecord,
    DriftRecord,
    ModelRecord,
    RunRecord,
    StageEventRecord,
    ValidationRecord,
)

__all__ = [
    "BatchRecord",
    "DatasetRecord",
    "DeploymentRecord",
    "DriftRecord",
    "ModelRecord",
    "RunRecord",
    "StageEventRecord",
    "Store",
    "ValidationRecord",
]
