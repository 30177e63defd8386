"""KerasTuner chief/worker search through `faceprobe tune --role --oracle`, on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from faceprobe.errors import ConfigError
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.synthetic import write_synthetic_store
from faceprobe.heads.tune import tune_store
from faceprobe.heads.tune_distributed import DONE, parse_oracle
from faceprobe.heads.tune_state import PROJECT
from faceprobe.heads.tune_trial import TRIAL_RECORD

TRIALS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_complete_a_search(tmp_path):
    """Two workers and a chief on loopback. On a loaded box one worker may still be importing
    when the other has run every trial and the chief has left: it must then end cleanly (the
    chief's done file), so the assertions allow a worker that ran nothing. A worker started after
    the search is over exercises that path every time."""
    store = write_synthetic_store(tmp_path / "s", 600, 8)
    oracle = f"127.0.0.1:{_free_port()}"
    common = ["tune", str(store), "--tasks", "gender,age", "--head", "mlp", "--tuner", "random",
              "--trials", str(TRIALS), "--max-epochs", "3", "--dir", str(tmp_path / "search"),
              "--out", str(tmp_path / "best"), "--oracle", oracle]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def start(role: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "faceprobe", *common, "--role", role],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
        outs = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=400)
                outs.append((p.returncode, out, err))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for rc, _out, err in outs:
            assert rc == 0, err[-3000:]
        return outs

    # workers first: they wait for the chief, so usually both are ready for the first trial
    outs = finish([start("worker"), start("worker"), start("chief")])
    assert "worker ran" in outs[0][1] and "worker ran" in outs[1][1]
    assert f"{TRIALS} trials" in outs[2][1] and "saved" in outs[2][1]

    trial_dirs = sorted((tmp_path / "search" / PROJECT).glob("trial_*"))
    assert len(trial_dirs) == TRIALS
    records = [json.loads((d / TRIAL_RECORD).read_text()) for d in trial_dirs]
    states = [json.loads((d / "trial.json").read_text()) for d in trial_dirs]
    assert all(s["status"] == "COMPLETED" and s["score"] is not None for s in states)
    tuner_ids = {r["tuner_id"] for r in records}
    assert 1 <= len(tuner_ids) <= 2 and all(t.startswith("worker-") for t in tuner_ids), tuner_ids
    ran = [int(o[1].split("worker ran ")[1].split()[0]) for o in outs[:2]]
    assert sum(ran) == TRIALS and max(ran) >= 1
    meta = load_bundle(tmp_path / "best").meta["tuning"]
    assert meta["trials"] == TRIALS
    assert json.loads((tmp_path / "search" / DONE).read_text())["trials"] == TRIALS

    # the race, forced: a worker that arrives after the chief has finished and left
    (late,) = finish([start("worker")])
    assert "worker ran 0 trials" in late[1], late
    assert "already complete" in late[2] + late[1]
    assert len(sorted((tmp_path / "search" / PROJECT).glob("trial_*"))) == TRIALS


def test_worker_whose_chief_left_after_the_search_ends_cleanly(tmp_path):
    """The chief gone mid-call: a call that times out while the done file says the search is
    over ends the worker's search (KerasTuner's client would wait an hour); before that file
    exists the call is retried."""
    import grpc

    from faceprobe.heads.tune_distributed import (
        _mark_done,
        _PatientStub,
        _search_done,
        _SearchOver,
    )

    class Timeout(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.DEADLINE_EXCEEDED

    calls = []

    class Stub:
        def CreateTrial(self, request, **kw):
            calls.append(kw)
            if len(calls) < 3:
                raise Timeout()
            return "trial"

    stub = _PatientStub(Stub(), lambda: _search_done(tmp_path, 6), timeout=0.5)
    assert stub.CreateTrial("req", wait_for_ready=True, timeout=3600) == "trial"
    assert len(calls) == 3 and all(kw["timeout"] == 0.5 and kw["wait_for_ready"] for kw in calls)
    _mark_done(tmp_path, 4, 4)  # a smaller search than this worker's: not its search
    calls.clear()
    assert stub.CreateTrial("req") == "trial"
    _mark_done(tmp_path, 6, 6)
    calls.clear()
    with pytest.raises(_SearchOver):
        stub.CreateTrial("req")
    assert len(calls) == 1


def test_late_worker_returns_without_a_chief_once_the_search_is_done(tmp_path, monkeypatch):
    from faceprobe.heads import tune_distributed
    from faceprobe.heads.tune_distributed import _mark_done

    monkeypatch.setattr(tune_distributed, "CHIEF_WAIT_S", 3)  # fail fast rather than wait for no chief

    store = write_synthetic_store(tmp_path / "s", 200, 8)
    d = tmp_path / "d"
    tune_store(store, "gender", head="logreg", trials=2, directory=d)
    _mark_done(d, 2, 2)
    said = []
    res = tune_store(store, "gender", head="logreg", trials=2, directory=d, role="worker",
                     oracle=f"127.0.0.1:{_free_port()}", log=said.append)  # nobody listens
    assert res.trials_run_now == 0 and res.bundle is None
    assert "already complete" in said[-1]


def test_distributed_options_are_checked(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 200, 8)
    with pytest.raises(ConfigError, match="needs --oracle HOST:PORT"):
        tune_store(store, "gender", head="logreg", directory=tmp_path / "d", role="worker")
    with pytest.raises(ConfigError, match="add --role chief or worker"):
        tune_store(store, "gender", head="logreg", directory=tmp_path / "d", oracle="h:1")
    with pytest.raises(ConfigError, match="--role must be one of chief, worker"):
        tune_store(store, "gender", head="logreg", directory=tmp_path / "d", role="boss",
                   oracle="h:1")
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        parse_oracle("localhost")
    assert parse_oracle("[::1]:8000") == ("::1", 8000)
    assert parse_oracle("10.0.0.5:8000") == ("10.0.0.5", 8000)


def test_chief_requeues_trials_left_running_by_a_dead_worker():
    from types import SimpleNamespace

    from faceprobe.heads.tune_state import requeue_unfinished

    trial = SimpleNamespace(trial_id="3", status="RUNNING")
    done = SimpleNamespace(trial_id="2", status="COMPLETED")
    oracle = SimpleNamespace(ongoing_trials={"worker-a-1": trial}, _retry_queue=[],
                             trials={"2": done, "3": trial})
    said = []
    requeue_unfinished(oracle, said.append)
    assert oracle.ongoing_trials == {} and oracle._retry_queue == ["3"]
    assert "unfinished: 3" in said[0]
