"""Baseline (b) of bench_serving.py: the server one writes first.

FastAPI + uvicorn, a synchronous handler that builds a pandas frame from the request's records
and runs the torch model on it, once per request: no batching, no ONNX Runtime, no prediction
log and no metrics. The request type is the same generated `Record` our service takes, so both
validate the same input.

One torch thread per worker (BENCH_TORCH_THREADS, default 1), as ours runs ONNX Runtime: with
torch's default of a thread per core, 2 workers on 2 cores have their OpenMP threads wait on
each other, and on a busy machine (b) at concurrency 1 with 64 records swung from 117 to 33
req/s between runs. One thread is this baseline at its best, so ratios against it are
conservative.

    BENCH_MODEL_DIR=<torch model folder> uvicorn naive_fastapi:app --workers 2 --port 3002 \
        --no-access-log   # from this folder
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from fastapi import FastAPI
from pydantic import BaseModel, Field

from pipelines.artifact import load_predictor
from serving.schema import input_schema

torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
PREDICTOR = load_predictor(Path(os.environ["BENCH_MODEL_DIR"]))
Record = input_schema(PREDICTOR.manifest["schema"]).record
CLASSES = [str(c) for c in PREDICTOR.preprocessor.classes]
REF = os.environ.get("BENCH_MODEL_REF", "torch")


class Body(BaseModel):
    records: list[Record] = Field(min_length=1, max_length=1000)  # type: ignore[valid-type]


app = FastAPI()


@app.post("/predict")
def predict(body: Body) -> dict[str, Any]:
    frame = pd.DataFrame([r.model_dump(by_alias=True) for r in body.records])
    scores = PREDICTOR.scores(frame, strict=True)
    labels = PREDICTOR.labels(scores)
    request_id = uuid.uuid4().hex
    return {
        "predictions": [
            {
                "prediction": str(label),
                "probability": float(row.max()),
                "probabilities": dict(zip(CLASSES, map(float, row), strict=True)),
                "version": REF,
                "request_id": request_id,
            }
            for label, row in zip(labels, scores, strict=True)
        ],
        "version": REF,
        "request_id": request_id,
    }


@app.get("/readyz")
def readyz() -> dict[str, bool]:
    return {"ready": True}
