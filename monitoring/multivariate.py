"""Multivariate drift: does a window still fit the reference's correlations and ranges?

Per-column tests miss a change in how columns move together: when a temperature regulator fails,
process temperature keeps its distribution but stops following air temperature. Following
NannyML's data reconstruction check, a PCA fitted on the standardised numerical columns of a
reference keeps the directions that hold most of the variance (65% by default); a row that no
longer follows the reference's correlations lands away from that subspace, and its
reconstruction error (the Euclidean distance between the standardised row and its projection)
grows. The reference's own error, averaged over chunks of consecutive rows, gives a mean and a
standard deviation; a window is flagged when its mean error falls outside mean +/- 3 sd. A chunk
is as long as the window, capped at a tenth of the reference: a 5,000-row window against a
100,000-row reference meets 20 chunks of 5,000 rows (the result says which size it used). Only
numerical columns take part; a change in a category's mix is the per-column check's to find
(monitoring/drift.py).

A range check beside it counts the rows with any numerical column outside the reference's
[min, max]: a model's inputs past what it was ever checked on make any estimate of its
performance a guess.

    check = ReconstructionCheck.fit(reference, numerical=[...])
    result = check.check(window)        # MultivariateResult; result.flagged, result.reasons()
    ReconstructionCheck.from_dict(json.loads(text))   # state is plain numbers, never a pickle
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlops.errors import MlopsError

VARIANCE = 0.65  # NannyML's default share of variance the PCA keeps
SIGMAS = 3.0
MIN_CHUNKS = 10  # a standard deviation of fewer chunk means says little
TOLERANCE = 0.01  # share of rows allowed outside the reference's range


@dataclass(frozen=True)
class ColumnRange:
    column: str
    below: float  # share of the window's rows under the reference's minimum
    above: float  # share over its maximum
    minimum: float
    maximum: float


@dataclass(frozen=True)
class MultivariateResult:
    rows: int
    chunk_rows: int  # the reference chunk size the bounds were computed for
    error: float  # the window's mean reconstruction error
    lower: float
    upper: float
    columns: tuple[ColumnRange, ...]
    out_of_range: float  # share of rows with any column outside the reference's range
    tolerance: float

    @property
    def drift_flagged(self) -> bool:
        return not self.lower <= self.error <= self.upper

    @property
    def range_flagged(self) -> bool:
        return self.out_of_range > self.tolerance

    @property
    def flagged(self) -> bool:
        return self.drift_flagged or self.range_flagged

    def reasons(self) -> list[str]:
        """One line per failed check, the worst columns first."""
        out = []
        if self.drift_flagged:
            out.append(
                f"multivariate check: reconstruction error {self.error:.3g} outside "
                f"[{self.lower:.3g}, {self.upper:.3g}]"
            )
        if self.range_flagged:
            sides = [(c.below, c.column, "min") for c in self.columns] + [
                (c.above, c.column, "max") for c in self.columns
            ]
            worst = sorted((s for s in sides if s[0] > 0), reverse=True)
            named = [s for s in worst if s[0] > self.tolerance] or worst[:1]
            out.append(
                "inputs out of the reference's range: "
                + ", ".join(f"{col} [{side}] {share:.1%} of rows" for share, col, side in named)
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "chunk_rows": self.chunk_rows,
            "reconstruction_error": self.error,
            "lower": self.lower,
            "upper": self.upper,
            "drift_flagged": self.drift_flagged,
            "out_of_range": self.out_of_range,
            "tolerance": self.tolerance,
            "range_flagged": self.range_flagged,
            "columns": {
                c.column: {
                    "below": c.below,
                    "above": c.above,
                    "minimum": c.minimum,
                    "maximum": c.maximum,
                }
                for c in self.columns
            },
            "flagged": self.flagged,
            "reasons": self.reasons(),
        }


class ReconstructionCheck:
    """A PCA reconstruction-error check and a range check, fitted once on a reference."""

    def __init__(
        self,
        *,
        columns: Sequence[str],
        center: np.ndarray,
        scale: np.ndarray,
        components: np.ndarray,
        minimum: np.ndarray,
        maximum: np.ndarray,
        reference_errors: np.ndarray,
        sigmas: float = SIGMAS,
        min_chunks: int = MIN_CHUNKS,
        tolerance: float = TOLERANCE,
    ) -> None:
        d = len(columns)
        self.columns = tuple(columns)
        self.center = np.asarray(center, dtype=np.float64).reshape(d)
        self.scale = np.asarray(scale, dtype=np.float64).reshape(d)
        self.components = np.asarray(components, dtype=np.float64).reshape(-1, d)
        self.minimum = np.asarray(minimum, dtype=np.float64).reshape(d)
        self.maximum = np.asarray(maximum, dtype=np.float64).reshape(d)
        self.reference_errors = np.asarray(reference_errors, dtype=np.float64).reshape(-1)
        self.sigmas, self.min_chunks = float(sigmas), int(min_chunks)
        self.tolerance = float(tolerance)
        if len(self.reference_errors) < 2 * self.min_chunks:
            raise MlopsError(
                f"multivariate check: {len(self.reference_errors)} reference rows, need at least "
                f"{2 * self.min_chunks}"
            )

    @classmethod
    def fit(
        cls,
        reference: pd.DataFrame,
        numerical: Sequence[str],
        *,
        variance: float = VARIANCE,
        sigmas: float = SIGMAS,
        min_chunks: int = MIN_CHUNKS,
        tolerance: float = TOLERANCE,
    ) -> ReconstructionCheck:
        """Fits on `reference`'s `numerical` columns (nulls take the column's mean).

        Keep the reference in its time order: chunks of consecutive rows then carry the slow
        wander of real data, and the bounds do not flag windows for it."""
        from sklearn.decomposition import PCA

        if not 0 < variance < 1:
            raise MlopsError(f"multivariate check: variance must be in (0, 1), got {variance}")
        if len(numerical) < 2:
            raise MlopsError("multivariate check: needs at least two numerical columns")
        x = _matrix(reference, numerical, "reference")
        empty = [c for c, null in zip(numerical, np.isnan(x).all(axis=0), strict=True) if null]
        if empty:
            raise MlopsError(f"multivariate check: reference column(s) {empty} are all null")
        center, scale = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
        scale[scale == 0] = 1.0  # a constant column: any change shows as error, unscaled
        z = np.nan_to_num((x - center) / scale, nan=0.0)
        pca = PCA(n_components=variance, svd_solver="full").fit(z)
        # The PCA's own mean is ~0 after standardising; folding it into the centre keeps the
        # saved state to one centre and the components.
        center = center + pca.mean_ * scale
        return cls(
            columns=numerical,
            center=center,
            scale=scale,
            components=pca.components_,
            minimum=np.nanmin(x, axis=0),
            maximum=np.nanmax(x, axis=0),
            reference_errors=_reconstruction_errors(z - pca.mean_, pca.components_),
            sigmas=sigmas,
            min_chunks=min_chunks,
            tolerance=tolerance,
        )

    def errors(self, frame: pd.DataFrame) -> np.ndarray:
        """Each row's reconstruction error."""
        return self._errors(_matrix(frame, self.columns, "window"))

    def _errors(self, x: np.ndarray) -> np.ndarray:
        z = np.nan_to_num((x - self.center) / self.scale, nan=0.0)  # a null sits at the mean
        return _reconstruction_errors(z, self.components)

    def bounds(self, rows: int) -> tuple[float, float, int]:
        """Lower and upper bounds for a window of `rows` rows, and the chunk size used: the
        window's size, capped so the reference gives at least `min_chunks` chunks (a smaller
        chunk varies more, so the cap errs towards fewer alarms)."""
        n = len(self.reference_errors)
        size = max(1, min(rows, n // self.min_chunks))
        chunks = self.reference_errors[: (n // size) * size].reshape(-1, size).mean(axis=1)
        mean, sd = float(chunks.mean()), float(chunks.std(ddof=1))
        return mean - self.sigmas * sd, mean + self.sigmas * sd, size

    def check(self, window: pd.DataFrame) -> MultivariateResult:
        if window.empty:
            raise MlopsError("multivariate check: the window has no rows")
        x = _matrix(window, self.columns, "window")
        error = float(self._errors(x).mean())
        lower, upper, size = self.bounds(len(x))
        with np.errstate(invalid="ignore"):  # nulls are in range: they were imputed
            below, above = x < self.minimum, x > self.maximum
        columns = tuple(
            ColumnRange(
                column=c,
                below=float(below[:, i].mean()),
                above=float(above[:, i].mean()),
                minimum=float(self.minimum[i]),
                maximum=float(self.maximum[i]),
            )
            for i, c in enumerate(self.columns)
        )
        return MultivariateResult(
            rows=len(x),
            chunk_rows=size,
            error=error,
            lower=lower,
            upper=upper,
            columns=columns,
            out_of_range=float((below | above).any(axis=1).mean()),
            tolerance=self.tolerance,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and lists, ready for JSON."""
        return {
            "kind": "pca-reconstruction",
            "columns": list(self.columns),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "minimum": self.minimum.tolist(),
            "maximum": self.maximum.tolist(),
            "reference_errors": self.reference_errors.tolist(),
            "sigmas": self.sigmas,
            "min_chunks": self.min_chunks,
            "tolerance": self.tolerance,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReconstructionCheck:
        if d.get("kind") != "pca-reconstruction":
            raise MlopsError(f"multivariate check: not a saved check (kind {d.get('kind')!r})")
        try:
            return cls(
                columns=[str(c) for c in d["columns"]],
                center=np.asarray(d["center"], dtype=np.float64),
                scale=np.asarray(d["scale"], dtype=np.float64),
                components=np.asarray(d["components"], dtype=np.float64),
                minimum=np.asarray(d["minimum"], dtype=np.float64),
                maximum=np.asarray(d["maximum"], dtype=np.float64),
                reference_errors=np.asarray(d["reference_errors"], dtype=np.float64),
                sigmas=float(d["sigmas"]),
                min_chunks=int(d["min_chunks"]),
                tolerance=float(d["tolerance"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MlopsError(f"multivariate check: malformed saved state ({e})") from None


def _matrix(frame: pd.DataFrame, columns: Sequence[str], label: str) -> np.ndarray:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MlopsError(f"multivariate check: the {label} has no column(s) {missing}")
    try:
        return frame[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as e:
        raise MlopsError(
            f"multivariate check: the {label}'s columns are not numbers ({e})"
        ) from None


def _reconstruction_errors(z: np.ndarray, components: np.ndarray) -> np.ndarray:
    back = (z @ components.T) @ components
    return np.asarray(np.sqrt(((z - back) ** 2).sum(axis=1)), dtype=np.float64)
