"""Per-column drift between a reference sample and a window of served records, by Evidently 0.7.

Evidently picks each column's method from its type and the sample sizes (Kolmogorov-Smirnov or
chi-square p-values on small samples, Wasserstein or Jensen-Shannon distances on large ones) and
decides, per column, whether it drifted; this module keeps its decisions as they are and reads
them from the report's tests, so what `DriftResult` says is what the HTML report shows.

    result, snapshot = compare(reference, current, numerical=[...], categorical=[...])
    html, js = save(snapshot, folder, "ai4i-20261124T0900")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mlops.errors import MlopsError

Kind = Literal["numerical", "categorical"]
SMALL_WINDOW = 1_000  # rows; up to this, K-S and chi-square p-values instead of distances


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: Kind
    method: str  # Evidently's name for it, e.g. "K-S p_value", "Wasserstein distance (normed)"
    score: float  # a p-value (drift when below the threshold) or a distance (when above)
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    reference_rows: int
    current_rows: int
    columns: tuple[ColumnDrift, ...]

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def drift_share(self) -> float:
        return len(self.drifted) / len(self.columns) if self.columns else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "drift_share": self.drift_share,
            "drifted": self.drifted,
            "columns": [asdict(c) for c in self.columns],
        }


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numerical: Sequence[str],
    categorical: Sequence[str] = (),
    summary: bool = False,
) -> tuple[DriftResult, Any]:
    """Drift of each named column of `current` against `reference`; the result, and Evidently's
    snapshot (for `save`). With `summary`, the report also carries Evidently's data summary of
    both (counts, missing values, ranges, per-column statistics)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    names = [*numerical, *categorical]
    if not names:
        raise MlopsError("drift: no columns to compare")
    for label, frame in (("reference", reference), ("current", current)):
        missing = [c for c in names if c not in frame.columns]
        if missing:
            raise MlopsError(f"drift: the {label} data has no column(s) {missing}")
        if frame.empty:
            raise MlopsError(f"drift: the {label} data has no rows")
    definition = DataDefinition(
        numerical_columns=list(numerical), categorical_columns=list(categorical)
    )

    def dataset(frame: pd.DataFrame) -> Any:
        data = frame[names].copy()
        for c in categorical:  # categories as text, as the schema keeps them
            data[c] = data[c].astype("string").astype(object)
        return Dataset.from_pandas(data, data_definition=definition)

    # Evidently picks a column's method by the reference's size alone: past 1,000 reference
    # rows, a distance with a fixed threshold, which a small window crosses by chance (a
    # 100-row window of undrifted traffic flagged 3 of 6 ai4i columns). A small window gets
    # tests whose p-values account for its size.
    small = len(current) <= SMALL_WINDOW
    presets: list[Any] = [
        DataDriftPreset(
            columns=names,
            num_method="ks" if small else None,
            cat_method="chisquare" if small else None,
        )
    ]
    if summary:
        presets.append(DataSummaryPreset(columns=names))
    report = Report(presets, include_tests=True)
    snapshot = report.run(dataset(current), dataset(reference))
    kinds: dict[str, Kind] = dict.fromkeys(numerical, "numerical")
    kinds.update(dict.fromkeys(categorical, "categorical"))
    return _read(snapshot.dict(), kinds, len(reference), len(current)), snapshot


def _read(
    found: dict[str, Any], kinds: dict[str, Kind], reference_rows: int, current_rows: int
) -> DriftResult:
    """Per-column results from a snapshot's dict: each ValueDrift metric's score and the status
    of the test Evidently bound to it."""
    metrics = {
        m["id"]: m
        for m in found["metrics"]
        if m["config"].get("type", "").endswith("ValueDrift") and m["config"]["column"] in kinds
    }
    status = {
        t["metric_config"]["metric_id"]: t["status"]
        for t in found.get("tests", [])
        if t["metric_config"]["metric_id"] in metrics
    }
    columns = []
    for metric_id, m in metrics.items():
        config = m["config"]
        if metric_id not in status:
            raise MlopsError(f"drift: Evidently gave no verdict for column {config['column']!r}")
        columns.append(
            ColumnDrift(
                column=config["column"],
                kind=kinds[config["column"]],
                method=str(config["method"]),
                score=float(m["value"]),
                threshold=float(config["threshold"]),
                drifted=status[metric_id] == "FAIL",
            )
        )
    order = list(kinds)
    columns.sort(key=lambda c: order.index(c.column))
    return DriftResult(reference_rows, current_rows, tuple(columns))


def save(snapshot: Any, folder: Path, stem: str) -> tuple[Path, Path]:
    """The report as HTML and JSON in `folder`, each written to a temporary name and renamed."""
    if not stem or "/" in stem or stem.startswith("."):
        raise MlopsError(f"drift: {stem!r} is not a report name")
    folder.mkdir(parents=True, exist_ok=True)
    html, js = folder / f"{stem}.html", folder / f"{stem}.json"
    tmp_html, tmp_js = folder / f".{stem}.html.tmp", folder / f".{stem}.json.tmp"
    snapshot.save_html(str(tmp_html))
    tmp_js.write_text(json.dumps(snapshot.dict(), default=str))
    os.replace(tmp_html, html)
    os.replace(tmp_js, js)
    return html, js
