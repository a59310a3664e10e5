"""Rollouts against a real server under steady load: promote, canary, shadow and rollback take
effect on every worker within 2 x serve.poll_s, with no failed request and no restart; a corrupt
version is refused; disagreements reach the review queue; every answer reaches the log; a
killed worker comes back by itself."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from serving_kit import POLL_S, Served, wait_for

from mlops.predictions import inputs_of, read_log
from pipelines.artifact import load_predictor, model_folder, read_manifest
from serving.host import canary_side
from serving.package import model_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Answer:
    sent: float
    status: int
    version: str | None
    request_id: str
    record: int
    prediction: object = None


@dataclass
class Load:
    """Clients sending one record per request, each with a fresh request id, until stopped."""

    served: Served
    clients: int = 4
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, i: int) -> None:
        records = self.served.sample
        with httpx.Client(base_url=self.served.url, timeout=10) as client:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                k = (n * self.clients + i) % len(records)
                rid = uuid.uuid4().hex
                sent = time.monotonic()
                try:
                    r = client.post(
                        "/predict", json={"records": [records[k]]}, headers={"X-Request-ID": rid}
                    )
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                body = r.json() if r.status_code == 200 else {}
                pred = body["predictions"][0]["prediction"] if body else None
                self.answers.append(Answer(sent, r.status_code, body.get("version"), rid, k, pred))

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.sent >= t]

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]


def _switch_time(load: Load, changed: float, new: str) -> float:
    """Seconds from a deployment change until the last request answered by anything else was
    sent (0 when none was)."""
    time.sleep(2 * POLL_S + 1.0)  # the window, and then some, to see stragglers
    old = [a for a in load.since(changed) if a.status == 200 and a.version != new]
    return max((a.sent - changed for a in old), default=0.0)


def test_promote_canary_shadow_rollback_under_load(served: Served) -> None:
    served.reset()
    good, noise = served.good.ref, served.noise.ref
    pid_before = served.proc.pid
    workers_before = _workers(served)
    truth = load_predictor(model_folder(served.ws.version_dir(served.good.path)))
    import pandas as pd

    expected = list(truth.predict(pd.DataFrame(served.sample), strict=True))
    with Load(served) as load, served.store() as store:
        time.sleep(1.0)

        # canary 30%: after the window, each request's side is its id's hash
        t = time.monotonic()
        store.set_canary(served.noise.id, 0.3, actor="test")
        time.sleep(2 * POLL_S)
        t_settled = time.monotonic()
        time.sleep(3.0)
        after = [a for a in load.since(t_settled) if a.status == 200]
        assert len(after) > 100
        for a in after:
            assert a.version == (noise if canary_side(a.request_id, 0.3) else good), a
        share = sum(a.version == noise for a in after) / len(after)
        assert 0.15 < share < 0.45, share

        # shadow instead of canary: responses come from production only, and are production's
        store.clear_deployment("ai4i", "canary", actor="test")
        t_shadow_set = time.monotonic()
        store.set_shadow(served.noise.id, actor="test")
        time.sleep(2 * POLL_S)
        t_shadow = time.monotonic()
        time.sleep(3.0)
        shadowed = [a for a in load.since(t_shadow)]
        assert all(a.status == 200 and a.version == good for a in shadowed)
        assert all(a.prediction == expected[a.record] for a in shadowed)
        store.clear_deployment("ai4i", "shadow", actor="test")
        time.sleep(2 * POLL_S)
        t_shadow_over = time.monotonic()

        # promote noise (staged): every worker answers with it within 2 x poll_s
        t = time.monotonic()
        store.set_stage(served.noise.id, "production", action="promote", reason="test")
        assert _switch_time(load, t, noise) <= 2 * POLL_S

        # rollback: good is back, as fast
        t = time.monotonic()
        store.rollback("ai4i", reason="test rollback", actor="test")
        assert _switch_time(load, t, good) <= 2 * POLL_S

    assert load.errors == [] and load.failed() == [], (load.errors[:3], load.failed()[:3])
    assert len(load.answers) > 500
    # no restart: the same server process and the same workers answered throughout
    assert served.proc.poll() is None and served.proc.pid == pid_before
    assert _workers(served) == workers_before
    # the shadow's answers are in the log, marked as such, never sent to anyone
    log = read_log(served.ws.predictions_dir, "ai4i")
    shadow_ids = set(log.loc[log["route"] == "shadow", "request_id"])
    window = {a.request_id for a in load.since(t_shadow_set) if a.sent < t_shadow_over}
    assert shadow_ids and shadow_ids <= window


def test_canary_share_is_close_to_the_setting_and_sticky(served: Served) -> None:
    served.reset()
    ids = [f"client-{i}" for i in range(2000)]
    # the hash alone, over 2,000 ids: within 3 points of 10%
    assert abs(sum(canary_side(i, 0.10) for i in ids) / 2000 - 0.10) <= 0.03
    with served.store() as store:
        store.set_canary(served.noise.id, 0.10, actor="test")
    time.sleep(2 * POLL_S + 0.2)
    sides: dict[str, str] = {}
    with httpx.Client(base_url=served.url) as client:
        for i in ids:
            r = client.post(
                "/predict", json={"records": served.sample[:1]}, headers={"X-Request-ID": i}
            )
            assert r.status_code == 200
            sides[i] = r.json()["version"]
        share = sum(v == served.noise.ref for v in sides.values()) / len(ids)
        assert abs(share - 0.10) <= 0.03, share
        # the same id, or the same client id with fresh request ids, always lands on one side
        for i in ids[:20]:
            for header in ("X-Request-ID", "X-Client-ID"):
                again = {
                    client.post("/predict", json={"records": served.sample[:1]},
                                headers={header: i}).json()["version"]
                    for _ in range(3)
                }  # fmt: skip
                assert again == {sides[i]}, header
    served.reset()


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_answering(served: Served) -> None:
    import bentoml

    served.reset()
    with served.store() as store:
        package = store.get_package(served.spare.id)
        assert package is not None
        folder = Path(
            bentoml.models.get(package.model_tag, _model_store=model_store(served.ws)).path
        )
        weights = folder / read_manifest(folder)["weights"]
        assert weights.is_file()
        original = weights.read_bytes()
        weights.write_bytes(original[:-64] + b"\0" * 64)  # same size, different bytes
        try:
            with Load(served, clients=2) as load:
                time.sleep(0.5)
                store.set_stage(served.spare.id, "production", action="promote", reason="test")
                time.sleep(2 * POLL_S + 1.0)
            assert load.failed() == [] and load.errors == []
            assert {a.version for a in load.answers} == {served.good.ref}
            refused = [e for e in store.deployment_events("ai4i") if e.action == "swap-failed"]
            assert refused and refused[-1].model_version_id == served.spare.id
            assert "sha256" in refused[-1].reason
        finally:
            weights.write_bytes(original)
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 'mlops_swaps_total{model="ai4i",outcome="failed"}' in metrics
    status = _cli(served, "status", "--json")
    (state,) = json.loads(status)
    assert state["last_event"]["action"] == "promote"
    assert {e["model_version_id"] for e in state["refused"]} == {served.spare.id}
    assert "sha256" in _cli(served, "status")
    served.reset()


def test_shadow_disagreements_are_reviewed_and_become_labels(served: Served) -> None:
    served.reset()
    with served.store() as store:
        store.set_shadow(served.noise.id, actor="test")
    listed: list[dict[str, object]] = []
    sent: list[str] = []

    def queued() -> bool:
        # Until every worker has the shadow loaded, a request may meet one that has not yet.
        rid = f"review-me-{len(sent)}"
        r = served.predict(served.sample, **{"X-Request-ID": rid})
        assert r.status_code == 200 and r.json()["version"] == served.good.ref
        sent.append(rid)
        time.sleep(2 * POLL_S)  # reviews are written by each worker's poll loop
        # by request id: the load test before this one may have queued thousands of its own
        asked = [a for rid in sent for a in ("--request-id", rid)]
        listed[:] = json.loads(_cli(served, "review", "list", "--json", "--limit", "5000", *asked))
        return any(x["request_id"] in sent for x in listed)

    wait_for(queued, timeout=30, what="reviews")
    rid = next(x["request_id"] for x in listed if x["request_id"] in sent)
    mine = [x for x in listed if x["request_id"] == rid]
    # exactly the records where the two versions answered differently
    truth_good = load_predictor(model_folder(served.ws.version_dir(served.good.path)))
    truth_noise = load_predictor(model_folder(served.ws.version_dir(served.noise.path)))
    import pandas as pd

    frame = pd.DataFrame(served.sample)
    differ = {
        i for i, (a, b) in enumerate(zip(truth_good.predict(frame), truth_noise.predict(frame),
                                         strict=True)) if a != b
    }  # fmt: skip
    assert differ and {x["record"] for x in mine} == differ
    first = mine[0]
    assert first["route"] == "shadow" and first["inputs"] == served.sample[first["record"]]
    assert first["production_output"]["prediction"] != first["other_output"]["prediction"]
    out = _cli(served, "review", "resolve", str(first["id"]), "--label", "1")
    assert "resolved" in out
    with served.store() as store:
        labels = [x for x in store.list_labels("ai4i") if x.request_id == rid]
        assert [(x.record, x.value, x.source) for x in labels] == [(first["record"], "1", "review")]
        assert store.list_reviews(status="resolved")[-1].id == first["id"]
    bad = _cli(served, "review", "resolve", str(mine[-1]["id"]), "--label", "7", check=False)
    assert "not one of the classes" in bad
    served.reset()


def test_the_prediction_log_holds_one_row_per_answered_request(served: Served) -> None:
    served.reset()
    with Load(served, clients=3) as load:
        time.sleep(4.0)
    ok = {a.request_id for a in load.answers if a.status == 200}
    assert len(ok) > 100

    def logged() -> int:
        log = read_log(served.ws.predictions_dir, "ai4i")
        return int(log["request_id"].isin(ok).sum())

    wait_for(lambda: logged() >= len(ok), timeout=10, what="the log to catch up")
    log = read_log(served.ws.predictions_dir, "ai4i")
    mine = log[log["request_id"].isin(ok)]
    assert len(mine) == len(ok) and mine["request_id"].is_unique
    assert set(mine["route"]) == {"production"} and set(mine["version"]) == {served.good.version}
    assert (mine["latency_ms"] > 0).all() and mine["score"].between(0, 1).all()
    inputs = inputs_of(mine)
    assert set(inputs.columns) == set(served.sample[0])
    sent = {a.request_id: served.sample[a.record] for a in load.answers if a.status == 200}
    first = mine.iloc[0]
    assert inputs.iloc[0].to_dict() == sent[first["request_id"]]
    tail = _cli(served, "predictions", "tail", "-n", "5", "--json")
    assert len(json.loads(tail)) == 5


def _workers(served: Served) -> set[int]:
    """PIDs of the server's worker processes (BentoML's arbiter starts them)."""
    root = psutil.Process(served.proc.pid)
    found = set()
    for p in root.children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker.service" in " ".join(
                p.cmdline()
            ):
                found.add(p.pid)
        except psutil.Error:  # gone, or a zombie, between listing and asking
            continue
    return found


def test_killing_a_worker_under_load_recovers_by_itself(served: Served) -> None:
    served.reset()
    workers = _workers(served)
    assert len(workers) == 2, workers
    victim = sorted(workers)[0]
    with Load(served, clients=4) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_workers(served) - {victim}) == 2, timeout=60, what="a new worker")
        wait_for(lambda: httpx.get(f"{served.url}/readyz").status_code == 200, what="ready")
        time.sleep(3.0)
        recovered_at = time.monotonic()
        time.sleep(2.0)
    failed = len(load.errors) + len(load.failed())
    total = len(load.answers) + len(load.errors)
    # failures are counted, few, and all around the kill; afterwards every request succeeds
    assert failed <= max(20, 0.05 * total), (failed, total, load.errors[:3])
    assert all(a.status == 200 for a in load.since(recovered_at))
    assert killed_at < recovered_at
    assert served.proc.poll() is None
    print(f"killed worker {victim}: {failed} failed of {total} requests")


def _cli(served: Served, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "mlops", "-w", str(served.ws.root), *args],
        env={**served.env, "COLUMNS": "250"}, capture_output=True, text=True,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr
