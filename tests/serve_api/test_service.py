"""A real `bentoml serve` with 2 workers: answers, refusals, health, metrics, the admin token."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from serving_kit import TOKEN, Served

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_good_requests_are_answered_with_the_version(served: Served) -> None:
    served.reset()
    records = served.sample[:5]
    r = served.predict(records, **{"X-Request-ID": "req-42"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-request-id"] == "req-42" == body["request_id"]
    assert body["version"] == served.good.ref
    assert len(body["predictions"]) == 5
    for p in body["predictions"]:
        assert p["version"] == served.good.ref and p["request_id"] == "req-42"
        assert p["prediction"] in (0, 1)
        assert math.isclose(sum(p["probabilities"].values()), 1.0, abs_tol=1e-5)
        assert p["probability"] == max(p["probabilities"].values())
    # without a header, each request gets its own id
    ids = {served.predict(records[:1]).json()["request_id"] for _ in range(3)}
    assert len(ids) == 3


def test_the_openapi_page_documents_each_column_with_its_type(served: Served) -> None:
    spec = httpx.get(f"{served.url}/docs.json").json()
    record = spec["components"]["schemas"]["Record"]
    props = record["properties"]
    assert record["additionalProperties"] is False
    assert props["Type"]["enum"] == ["H", "L", "M"]
    assert props["Air temperature [K]"]["type"] == "number"
    assert props["Rotational speed [rpm]"]["type"] == "integer"
    assert "training range" in props["Torque [Nm]"]["description"]


RPM = "Rotational speed [rpm]"


def _with(served: Served, **changes: object) -> dict[str, object]:
    return {**served.sample[0], **changes}


# kind -> (request kwargs, status, words the error must contain)
def _malformed(served: Served) -> dict[str, tuple[dict[str, object], int, list[str]]]:
    good = served.sample[0]
    missing = {k: v for k, v in good.items() if k != "Torque [Nm]"}
    raw = json.dumps({"records": [good]})
    return {
        "wrong type": (
            {"json": {"records": [_with(served, **{"Air temperature [K]": "hot"})]}},
            400, ["Air temperature [K]", "JSON number"],
        ),
        "missing field": ({"json": {"records": [missing]}}, 400, ["Torque [Nm]", "Field required"]),
        "extra field": (
            {"json": {"records": [_with(served, colour="red")]}}, 400, ["colour", "Extra inputs"],
        ),
        "NaN": (
            {"content": raw.replace('"Torque [Nm]": ' + json.dumps(good["Torque [Nm]"]),
                                    '"Torque [Nm]": NaN')},
            400, ["Torque [Nm]", "finite"],
        ),
        "infinity": (
            {"content": raw.replace('"Torque [Nm]": ' + json.dumps(good["Torque [Nm]"]),
                                    '"Torque [Nm]": Infinity')},
            400, ["Torque [Nm]", "finite"],
        ),
        "unseen category": (
            {"json": {"records": [_with(served, Type="X")]}}, 400, ["Type", "'H', 'L' or 'M'"],
        ),
        "empty list": ({"json": {"records": []}}, 400, ["records", "at least 1"]),
        "too many records": (
            {"json": {"records": [good] * 1001}}, 400, ["records", "at most 1000"],
        ),
        "no records key": ({"json": {"rows": [good]}}, 400, ["records", "Field required"]),
        "oversized body": (
            {"content": " " * 4_000_001}, 413, ["body", "limit"],
        ),
        "not JSON": ({"content": "records=1"}, 400, ["Invalid JSON"]),
        "wrong content type": (
            {"content": raw, "headers": {"Content-Type": "text/csv"}}, 415,
            ["Content-Type", "application/json"],
        ),
        # found by hand after fuzzing: a 500 and NaN answers before they were refused
        "integer too large": (
            {"content": json.dumps({"records": [_with(served, **{RPM: 10**400})]})},
            400, ["Rotational speed [rpm]"],
        ),
        "reading absurdly far out": (
            {"json": {"records": [_with(served, **{"Torque [Nm]": 1e308})]}}, 400,
            ["Torque [Nm]", "range"],
        ),
        "boolean for a number": (
            {"json": {"records": [_with(served, **{"Torque [Nm]": True})]}}, 400,
            ["Torque [Nm]", "JSON number"],
        ),
        "text for a number": (
            {"json": {"records": [_with(served, **{"Torque [Nm]": "40.5"})]}}, 400,
            ["Torque [Nm]", "JSON number"],
        ),
        "bad request id": (
            {"json": {"records": [good]}, "headers": {"X-Request-ID": "a b"}}, 400,
            ["X-Request-ID"],
        ),
    }  # fmt: skip


KINDS = [
    "wrong type", "missing field", "extra field", "NaN", "infinity", "unseen category",
    "empty list", "too many records", "no records key", "oversized body", "not JSON",
    "wrong content type", "integer too large", "reading absurdly far out", "boolean for a number",
    "text for a number", "bad request id",
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_each_malformed_request_gets_a_4xx_naming_the_field(served: Served, kind: str) -> None:
    request, status, words = _malformed(served)[kind]
    headers = {"Content-Type": "application/json", **request.pop("headers", {})}  # type: ignore[dict-item]
    r = httpx.post(f"{served.url}/predict", headers=headers, **request)  # type: ignore[arg-type]
    assert r.status_code == status, (kind, r.status_code, r.text[:300])
    for word in words:
        assert word in r.text, (kind, word, r.text[:300])


def test_readyz_is_false_until_a_model_is_loaded(served: Served) -> None:
    # recorded by the fixture while the store had no production version
    assert served.before_promotion == {"livez": 200, "readyz": 503, "predict": 503}
    assert served.unready_error.startswith("no production version of ai4i")
    assert httpx.get(f"{served.url}/readyz").status_code == 200


def test_metrics_carry_our_counters(served: Served) -> None:
    served.reset()
    for _ in range(5):
        assert served.predict(served.sample[:3]).status_code == 200
    served.predict([{"nope": 1}])
    text = httpx.get(f"{served.url}/metrics").text
    series = _series(text)
    answered = sum(
        v for k, v in series.items()
        if k.startswith("mlops_requests_total{") and f'version="{served.good.ref}"' in k
    )  # fmt: skip
    assert answered >= 5
    assert sum(v for k, v in series.items() if k.startswith("mlops_records_total{")) >= 15
    assert series.get('mlops_rejected_requests_total{model="ai4i"}', 0) >= 1
    assert any(k.startswith("mlops_swaps_total{") and 'outcome="loaded"' in k for k in series)
    assert any(k.startswith("mlops_request_seconds_bucket{") for k in series)
    assert "mlops_canary_share" in text
    # and BentoML's own series are still there
    assert "bentoml_service_request_total" in text or "bentoml_api_server" in text


def _series(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_admin_reload_needs_the_token(served: Served) -> None:
    url = f"{served.url}/admin/reload"
    assert httpx.post(url, json={}).status_code == 401
    wrong = httpx.post(url, json={}, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and "Authorization" in wrong.json()["error"]
    ok = httpx.post(url, json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok.json()["serving"]["production"] == served.good.ref
