"""Baseline (a) of bench_serving.py: the framework's own ceiling.

A BentoML service with our service's settings (2 workers, access log off, tracing sample rate
0 and /predict excluded from it, the same traffic timeout, no batching) whose async API takes
the same typed request as ours
(the `Record` type generated from the served model's manifest, so BentoML parses and validates
exactly what it does for us) and returns the same response type, `PredictResponse`: a fixed
answer with one made-up prediction per record, built once per record count. No model, no
logging, no metrics.

The response type matters: with a plain `dict` return annotation BentoML builds the output's
JSON schema on every response (`IORootModel.mime_type`), which costs more than the rest of a
constant endpoint; a pydantic model return, as ours has, does not. (Ours writes its JSON itself
and returns the bytes; this one lets BentoML serialize the fixed answer, as any service would.)

BentoML's own request timeout stays, unless BENCH_OUR_TIMEOUT=1 puts ours (serving/guard.py) in
its place, as our service does.

    BENCH_MODEL_DIR=<model folder with manifest.json> BENCH_WORKERS=2 \
        bentoml serve constant_bento:ConstantService --port 3001   # from this folder
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import Field

from serving.guard import replace_bentoml_timeout
from serving.schema import Prediction, PredictResponse, input_schema

if os.environ.get("BENCH_OUR_TIMEOUT") == "1":  # the "What moved it" variant of (a)
    replace_bentoml_timeout()

_MANIFEST = json.loads((Path(os.environ["BENCH_MODEL_DIR"]) / "manifest.json").read_text())
Record = input_schema(_MANIFEST["schema"]).record
Records = Annotated[list[Record], Field(min_length=1, max_length=1000)]  # type: ignore[valid-type]

# One record's answer as ours gives it, with made-up values: the same shape and size.
PREDICTION = Prediction(
    prediction=0,
    probability=0.9,
    probabilities={"0": 0.9, "1": 0.1},
    version="constant:1",
    request_id="0" * 32,
)
ANSWERS: dict[int, PredictResponse] = {}


def answer(n: int) -> PredictResponse:
    if n not in ANSWERS:
        ANSWERS[n] = PredictResponse(
            predictions=[PREDICTION] * n, version="constant:1", request_id="0" * 32
        )
    return ANSWERS[n]


@bentoml.service(
    name="constant",
    workers=int(os.environ.get("BENCH_WORKERS", "2")),
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": ["/predict"]},
    traffic={"timeout": 30},
)
class ConstantService:
    @bentoml.api(route="/predict")
    async def predict(self, records: Records) -> PredictResponse:
        return answer(len(records))
