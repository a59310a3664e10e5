"""Which data set a command acts on: the workspace's own, or the one the user names.

A workspace knows its data sets (the store's `datasets` table, one spec each). Commands after
ingest act on "the workspace's data set": the one user data set when there is exactly one,
else the built-in one when it is all there is; with several user data sets the user names one.
"""

from __future__ import annotations

from mlops.errors import MlopsError, NotFoundError
from mlops.store import BatchRecord, DatasetRecord, Store
from pipelines.sources import AI4I_SPEC, check_dataset_name

BUILTIN_DATASETS = (AI4I_SPEC.name,)


def user_datasets(datasets: list[DatasetRecord]) -> list[DatasetRecord]:
    return [d for d in datasets if d.name not in BUILTIN_DATASETS]


def _listing(datasets: list[DatasetRecord]) -> str:
    return ", ".join(d.name for d in datasets) or "none"


def resolve_dataset(store: Store, requested: str | None = None) -> str:
    """The data set to act on: `requested` if given (it must exist), else the workspace's own.

    Raises a one-line MlopsError naming the data sets when the choice is ambiguous, and when
    the workspace holds no data yet.
    """
    datasets = store.list_datasets()
    if requested:
        check_dataset_name(requested)
        if requested not in {d.name for d in datasets}:
            raise NotFoundError(
                f"no data set {requested!r} in this workspace (data sets: {_listing(datasets)})"
            )
        return requested
    with_data = [d for d in datasets if d.batches > 0]
    user = user_datasets(with_data)
    if len(user) == 1:
        return user[0].name
    if len(user) > 1:
        raise MlopsError(
            f"this workspace holds {len(user)} data sets ({_listing(user)}): "
            "pass --dataset NAME to choose one"
        )
    if with_data:
        return with_data[0].name
    raise MlopsError(
        "this workspace holds no data yet: ingest a batch first "
        "(`mlops ingest --source csv:PATH --target COLUMN`)"
    )


def has_data(store: Store) -> bool:
    """Whether any data set of the workspace has a batch (else a run starts from a source)."""
    return any(d.batches for d in store.list_datasets())


def newest_batch(store: Store, dataset: str) -> BatchRecord:
    """The data set's most recently ingested batch; a one-line error when it has none."""
    batches = store.list_batches(dataset=dataset)
    if not batches:
        raise MlopsError(f"data set {dataset!r} has no batches: ingest one first")
    return batches[-1]
