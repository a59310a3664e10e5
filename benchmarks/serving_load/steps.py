"""Where a request's time goes inside our service, step by step, for bench_serving.py.

Runs the steps of `MlopsService.predict` one at a time on the served model, in one thread,
outside the server: parsing the typed body, the records back to dicts, encoding to the
model's inputs, the model, the answer objects and their JSON, the prediction log's rows, and
the log's write (per row, from a flush of about one second's rows). Prints one JSON line of
microseconds per request, for each body given. Needs the workspace's environment
(MLOPS_WORKSPACE, MLOPS_HOME, MLOPS_DATABASE_URL, MLOPS_SERVE_MODEL), as the server does.

    python benchmarks/serving_load/steps.py MODEL_DIR body-1.json body-64.json

It calls the service module's private helpers: if they change, this says so and the
benchmark reports the breakdown as unavailable.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from pydantic import create_model


def best_us(fn: Any, budget_s: float = 0.4) -> float:
    """Microseconds per call: the best of 5 repeats, each about budget_s / 5 long."""
    fn()
    once = max(timeit.timeit(fn, number=1), 1e-6)
    number = max(1, int(budget_s / 5 / once))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def time_body(
    sv: Any, model: Any, body_type: Any, plog: Any, path: Path
) -> tuple[int, dict[str, float]]:
    """The body's record count, and microseconds per request for each step on it."""
    raw = path.read_bytes()
    records = body_type.model_validate_json(raw).records
    n = len(records)
    columns = sv.SETUP.schema.columns_of(records)
    x, readings = sv._encode(model, columns, n)
    scores = model.predictor.scores_from_inputs(x)
    answer = sv.Answer.of(model, scores)
    logged = sv._logged_inputs(model, columns, readings)
    log_rows = sv._log_rows("r", model, "production", logged, answer, 1.0)
    # One flush of about 5,000 rows (a busy worker's second), per request of n rows.
    many = [log_rows] * max(1, 5000 // n)
    plog._write(many)  # warm-up: imports, the first file
    t0 = time.perf_counter()
    for _ in range(3):
        plog._write(many)
    flush_per_row = (time.perf_counter() - t0) / 3 / (len(many) * n) * 1e6
    return n, {
        "parse and validate the body": best_us(lambda: body_type.model_validate_json(raw)),
        "records to columns (columns_of)": best_us(lambda: sv.SETUP.schema.columns_of(records)),
        "encode (encode_columns)": best_us(lambda: sv._encode(model, columns, n)),
        "model (onnx, alone)": best_us(lambda: model.predictor.scores_from_inputs(x)),
        "answers (Answer.of)": best_us(lambda: sv.Answer.of(model, scores)),
        "answer JSON (Answer.json)": best_us(lambda: answer.json("r")),
        "prediction log rows (_log_rows)": best_us(
            lambda: sv._log_rows(
                "r", model, "production", sv._logged_inputs(model, columns, readings), answer, 1.0
            )
        ),
        "prediction log write (flush, per request)": flush_per_row * n,
    }


def main() -> None:
    import serving.service as sv
    from mlops.predictions import PredictionLog
    from pipelines.artifact import load_predictor
    from serving.host import Loaded

    model_dir = Path(sys.argv[1])
    model = Loaded(0, sv.SETUP.name, 0, load_predictor(model_dir, threads=1))  # as the host does
    body_type = create_model("Body", records=(sv.Records, ...))
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plog = PredictionLog(Path(tmp))
        for arg in sys.argv[2:]:
            n, steps = time_body(sv, model, body_type, plog, Path(arg))
            out[str(n)] = steps
    print("STEPS_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
