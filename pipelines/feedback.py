"""Labels that arrive after serving: `mlops feedback FILE` joins them to the prediction log by
request id and record index; the monitor turns them into realized quality per window."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from mlops.errors import MlopsError
from mlops.predictions import read_log
from mlops.settings import Workspace
from mlops.store import Store


@dataclass(frozen=True)
class FeedbackResult:
    stored: int
    matched: int  # labels whose (request id, record) the prediction log holds
    unmatched: int


def read_feedback(
    path: Path,
    *,
    request_column: str = "request_id",
    label_column: str = "label",
    record_column: str = "record",
    sep: str | None = None,
) -> list[tuple[str, int, str]]:
    """(request id, record, label) per row of a CSV or Parquet file; a bad row is a one-line
    error naming the file, the row and the column."""
    from pipelines.sources import read_table

    kind: Literal["csv", "parquet"] = (
        "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    )
    frame = read_table(path, kind, sep=sep)
    if kind == "csv" and request_column in frame.columns:
        # Ids are text: "000123" read as a number would never join the log again.
        frame[request_column] = _text_column(path, sep, request_column, len(frame))
    for col in (request_column, label_column):
        if col not in frame.columns:
            raise MlopsError(
                f"{path.name}: no column {col!r} (columns: {', '.join(map(str, frame.columns))})"
            )
    if frame.empty:
        raise MlopsError(f"{path.name}: no rows")
    ids = frame[request_column]
    labels = frame[label_column]
    records = frame[record_column] if record_column in frame.columns else pd.Series(0, frame.index)
    out = []
    for i, (rid, rec, label) in enumerate(zip(ids, records, labels, strict=True)):
        line = i + 2 if kind == "csv" else i + 1  # a CSV's header is its line 1
        where = f"{path.name} row {line}"
        if pd.isna(rid) or not str(rid).strip():
            raise MlopsError(f"{where}: {request_column!r} is empty")
        if pd.isna(label) or not str(label).strip():
            raise MlopsError(f"{where}: {label_column!r} is empty")
        try:
            index = int(rec)
            if float(rec) != index:
                raise ValueError
        except (TypeError, ValueError):
            raise MlopsError(f"{where}: {record_column!r} {rec!r} is not a record index") from None
        if index < 0:
            raise MlopsError(f"{where}: {record_column!r} {index} is negative")
        out.append((str(rid).strip(), index, _text(label)))
    return out


def _text_column(path: Path, sep: str | None, column: str, rows: int) -> pd.Series:
    """One column of a CSV read as text (the file was read already: it parses)."""
    raw = pd.read_csv(path, sep=sep or None, engine="python", dtype=str, keep_default_na=False)
    if column not in raw.columns or len(raw) != rows:
        raise MlopsError(f"{path.name}: could not read {column!r} as text")
    return raw[column]


def _text(value: object) -> str:
    """A label as the store keeps it: 1.0 read from a CSV column with gaps is the label 1."""
    return label_text(value)


def label_text(value: object) -> str:
    """One text per label, however it was read or written: 1, 1.0, "1" and "1.0" are "1"."""
    from pipelines.sources import label_key

    text = label_key(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def store_feedback(
    ws: Workspace, store: Store, name: str, rows: list[tuple[str, int, str]]
) -> FeedbackResult:
    """Checks the labels against the production model (its classes, or numbers for a
    regression), stores them in one transaction, and counts those the log can join."""
    model = store.production_model(name) or next(iter(store.list_models(name)[::-1]), None)
    if model is None:
        raise MlopsError(f"no model named {name!r}: nothing was served to label")
    import json

    from pipelines.artifact import Preprocessor
    from pipelines.gate import model_dir

    pre = Preprocessor.from_dict(
        json.loads((model_dir(ws, model) / "preprocessor.json").read_text())
    )
    if pre.task == "classification":
        classes = {label_text(c) for c in pre.classes}
        for rid, rec, label in rows:
            if label not in classes:
                raise MlopsError(
                    f"label {label!r} (request {rid}, record {rec}) is not one of {name}'s "
                    f"classes {sorted(classes)}"
                )
    else:
        for rid, rec, label in rows:
            try:
                float(label)
            except ValueError:
                raise MlopsError(
                    f"label {label!r} (request {rid}, record {rec}) is not a number"
                ) from None
    stored = store.add_labels(name, rows, source="feedback")
    log = read_log(ws.predictions_dir, name)
    served = set()
    if not log.empty:
        served = set(zip(log["request_id"].astype(str), log["record"].astype(int), strict=True))
    keys = {(rid, rec) for rid, rec, _ in rows}
    matched = len(keys & served)
    return FeedbackResult(stored=stored, matched=matched, unmatched=len(keys) - matched)
