"""The request and response types, generated from a model's manifest at start-up.

A client sends the columns of its data set as they are named there (`Air temperature [K]`
included): each becomes a field of `Record` with that name as its alias, its type (number,
integer or one of the training categories) and its training range in the OpenAPI page. Extra
fields, NaN, infinity, a wrong type or an unseen category fail validation and answer a 400 that
names the field.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model


def _category(value: Any) -> Any:
    # Categories are stored as text; a client sending 3 for the category "3" means "3".
    if isinstance(value, bool):
        return value
    return str(value) if isinstance(value, int | float) else value


def _number(value: Any) -> Any:
    # JSON has numbers: true or "300.5" for a reading is a client bug, not a value to coerce.
    if isinstance(value, bool | str):
        raise ValueError("a JSON number is required")
    return value


def _identifier(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W+", "_", name).strip("_") or "field"
    if base[0].isdigit() or keyword.iskeyword(base) or base.startswith(("model_", "_")):
        base = f"f_{base}"
    out, n = base, 2
    while out in taken:
        out, n = f"{base}_{n}", n + 1
    taken.add(out)
    return out


@dataclass(frozen=True)
class InputSchema:
    """What the service accepts: the generated Record type and which columns may be null."""

    record: type[BaseModel]
    columns: tuple[str, ...]
    nullable: frozenset[str]
    signature: tuple[tuple[str, str], ...]  # (column, dtype): what a swapped-in model must match
    attributes: tuple[tuple[str, str], ...]  # (Record attribute, column)

    def columns_of(self, records: Sequence[BaseModel]) -> dict[str, list[Any]]:
        """Validated records as columns (column name -> the records' values), read from the
        instances' attributes: no dict per record."""
        values = [r.__dict__ for r in records]
        return {column: [v[attr] for v in values] for attr, column in self.attributes}

    def compatible(self, schema: dict[str, Any]) -> str | None:
        """Why a model with manifest schema `schema` cannot serve through this type, or None."""
        theirs = tuple((f["name"], f["dtype"]) for f in schema.get("input", []))
        if theirs == self.signature:
            return None
        ours, other = dict(self.signature), dict(theirs)
        missing = sorted(set(other) - set(ours))
        if missing:
            return f"it needs input field(s) this server does not take: {missing}"
        extra = sorted(set(ours) - set(other))
        if extra:
            return f"it does not take input field(s) this server accepts: {extra}"
        changed = sorted(c for c in ours if ours[c] != other[c])
        return f"input field(s) changed type: {changed}" if changed else None


def input_schema(schema: dict[str, Any]) -> InputSchema:
    """The Record type for a manifest's `schema` (manifest format 2)."""
    fields: dict[str, Any] = {}
    attributes: list[tuple[str, str]] = []
    taken: set[str] = set()
    nullable: set[str] = set()
    for f in schema["input"]:
        name, dtype = f["name"], f["dtype"]
        doc: dict[str, Any] = {"alias": name, "title": name}
        if dtype == "category":
            kind: Any = Annotated[
                Literal[tuple(str(c) for c in f["categories"])],
                BeforeValidator(_category),
            ]
            doc["description"] = f"one of the {len(f['categories'])} training categories"
        else:
            base: Any = int if dtype == "integer" else float
            kind = Annotated[base, BeforeValidator(_number)]
            lo, hi = f.get("range") or (None, None)
            doc["description"] = (
                f"{dtype}; training range {lo} to {hi}" if lo is not None else dtype
            )
            if lo is not None:
                doc["examples"] = [lo]
        if f.get("nullable"):
            kind = kind | None
            nullable.add(name)
        attr = _identifier(name, taken)
        fields[attr] = (kind, Field(..., **doc))
        attributes.append((attr, name))
    record = create_model(
        "Record",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=False),
        **fields,
    )
    return InputSchema(
        record=record,
        columns=tuple(f["name"] for f in schema["input"]),
        nullable=frozenset(nullable),
        signature=tuple((f["name"], f["dtype"]) for f in schema["input"]),
        attributes=tuple(attributes),
    )


class Prediction(BaseModel):
    """One record's answer."""

    prediction: Any = Field(description="the predicted class, or the predicted value")
    probability: float | None = Field(
        None, description="classification: the probability of the predicted class"
    )
    probabilities: dict[str, float] | None = Field(
        None, description="classification: the probability of each class"
    )
    version: str = Field(description="the model version that answered, name:version")
    request_id: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    version: str
    request_id: str


def smoke_records(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows built from the manifest alone (each field at the ends and the middle of its
    training range; each category once): what a version must answer before it gets traffic."""
    rows: list[dict[str, Any]] = []
    for k in range(3):
        row: dict[str, Any] = {}
        for f in schema["input"]:
            if f["dtype"] == "category":
                cats = f["categories"]
                row[f["name"]] = cats[k % len(cats)] if cats else None
                continue
            lo, hi = f.get("range") or (0.0, 0.0)
            value = (lo, (lo + hi) / 2, hi)[k]
            row[f["name"]] = round(value) if f["dtype"] == "integer" else float(value)
        rows.append(row)
    return rows
