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
from faceprobe.heads.tune import PROJECT, TRIAL_RECORD, parse_oracle, tune_store

TRIALS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # racy on a loaded 2-core box: a worker still importing when the chief has
# already finished every trial with the other worker waits for a chief that is gone
def test_chief_and_two_workers_complete_a_search(tmp_path):
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

    # workers first: they wait for the chief, so both are ready when the first trial is handed out
    procs = [start("worker"), start("worker"), start("chief")]
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
    assert "worker ran" in outs[0][1] and "worker ran" in outs[1][1]
    assert f"{TRIALS} trials" in outs[2][1] and "saved" in outs[2][1]

    trial_dirs = sorted((tmp_path / "search" / PROJECT).glob("trial_*"))
    assert len(trial_dirs) == TRIALS
    records = [json.loads((d / TRIAL_RECORD).read_text()) for d in trial_dirs]
    states = [json.loads((d / "trial.json").read_text()) for d in trial_dirs]
    assert all(s["status"] == "COMPLETED" and s["score"] is not None for s in states)
    tuner_ids = {r["tuner_id"] for r in records}
    assert len(tuner_ids) == 2 and all(t.startswith("worker-") for t in tuner_ids), tuner_ids
    ran = [int(o[1].split("worker ran ")[1].split()[0]) for o in outs[:2]]
    assert sum(ran) == TRIALS and min(ran) >= 1
    meta = load_bundle(tmp_path / "best").meta["tuning"]
    assert meta["trials"] == TRIALS


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

    from faceprobe.heads.tune import _requeue_orphans

    oracle = SimpleNamespace(ongoing_trials={"worker-a-1": SimpleNamespace(trial_id="3")},
                             _retry_queue=[])
    said = []
    _requeue_orphans(oracle, said.append)
    assert oracle.ongoing_trials == {} and oracle._retry_queue == ["3"]
    assert "requeued" in said[0]
