"""Hyperparameter search over heads with KerasTuner's oracles, resumable from a directory.

Decisions:
- One runner for every head: a ``keras_tuner`` BaseTuner whose ``run_trial`` builds a head from
  the trial's hyperparameters, fits it on the train rows (validation rows for early stopping) and
  returns the validation score. The oracles (RandomSearch, Hyperband, BayesianOptimization) and
  the trial bookkeeping on disk are KerasTuner's, so a search interrupted after k trials and
  started again with the same ``--dir`` continues at trial k+1 (``overwrite=False``). scikit-learn
  heads go through the same runner rather than SklearnTuner, because a head here is one model per
  task, which SklearnTuner's single-estimator CV does not fit.
- The objective is comparable across trials whatever the loss weights: the mean over tasks of
  validation balanced accuracy (categorical tasks) and, for age, ``1 - MAE / MAE_median`` where
  MAE_median is the validation MAE of predicting the training median age. Validation loss is not
  used because the loss weights being tuned rescale it.
- A scikit-learn baseline is one independent model per task, so its refit takes each task's
  hyperparameters from the trial that scored best on that task (``task_params``; every trial
  records ``task_<name>`` scores); the mean objective only ranks trials. The Keras head shares
  one trunk, so it takes the best trial whole.
- The oracle is seeded with ``seed + 1``: KerasTuner's ``Oracle`` takes ``seed or
  random.randint(1, 10000)``, so the default seed 0 made every search draw different trials
  (three bayes SVM searches on UTKFace with "seed 0" gave test gender 0.900, 0.889 and 0.886).
- Hyperband's ``tuner/epochs`` is the epoch budget of a trial; trials are trained from scratch
  (no warm start from the parent bracket), which keeps a trial a pure function of its
  hyperparameters. Hyperband only applies to the Keras head (the baselines have no epochs).
- ``DIR/faceprobe-search.json`` fingerprints the search: head, tuner, space, tasks, features,
  seed, the store's backbone/weights/records and the split's row hash. A run whose fingerprint
  differs from the directory's is refused with the keys that differ: its trials would not be
  comparable with the recorded ones. ``--trials`` is not part of it, so it can grow on resume.
- A Keras trial is the same fit as the final model's first fit: the head's own batch size (256)
  and patience (10), at most ``max_epochs`` epochs (default 200, the head's default; Hyperband's
  ``tuner/epochs`` caps a trial lower), early stopping on the validation rows. The refit repeats
  the best trial's fit (same seed: the same weights and validation score) and then retrains on
  train + validation for the epoch count it chose. Trials used to run with batch 1024, patience 4
  and 30 epochs while the refit used 256/10/200, so the best trial was chosen for a training the
  final model did not get. The space's defaults are the untuned head's, and a fresh random or
  bayes MLP search runs them as its first trial, so the tuned head's validation score is never
  below the untuned one's. 20 trials on UTKFace's 2,694 train rows took 2.5-3.7 minutes on the
  shared 2-core box.
- Distributed search (``role='chief'|'worker'``, ``oracle='HOST:PORT'``) is KerasTuner's own
  chief/worker mode: the chief holds the oracle and serves it over gRPC, workers ask it for
  trials and report scores, every process shares ``directory``. Its switches are environment
  variables (KERASTUNER_TUNER_ID / _ORACLE_IP / _ORACLE_PORT); they are set only while the tuner
  lives and restored afterwards, so one process can run several searches. Every process loads the
  store and checks the directory's fingerprint (created atomically, first writer wins), so a
  worker started with other settings is refused instead of reporting incomparable scores. The
  chief serves with its own loop rather than KerasTuner's ``start_server``, which polls for the
  end every 20 s; after the last trial it writes ``DIR/faceprobe-search-done.json`` (the trial
  count), refits the best and writes ``out`` (workers write no bundle). A worker that starts or
  calls after the chief has finished (still importing while the other workers ran every trial)
  would wait an hour in KerasTuner's client for a chief that is gone; instead it checks that
  file while waiting for the chief and whenever a call to the chief times out, and ends cleanly
  with no trials run when the search it was started for is complete. Each trial directory gets
  ``faceprobe-trial.json`` naming the tuner id, host and pid that ran it, which KerasTuner itself
  does not record.
- The identity-space head (``margin``, alias ``arcface``; heads/margin.py) is searched over
  out_dim, hidden depth/width, ArcFace's scale ``s`` and margin ``m`` with the same runner. Its
  trials fit on the split's train identities (early stopping on held-out images of those
  identities, the head's own) and score top-1 identification on the validation identities, which
  the split keeps disjoint from training: each one's first image enrols, the others probe. That
  is what the head is for (people it has not seen), not held-out images of known people. The
  refit repeats the best trial's fit, then retrains on train + validation identities.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE
from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, FaceprobeError
from faceprobe.heads.baselines import make_head
from faceprobe.heads.bundle import check_out, save_bundle, store_provenance
from faceprobe.heads.common import present, task_labels
from faceprobe.heads.evaluate import compute_metrics
from faceprobe.heads.splits import make_split
from faceprobe.heads.train import fit_on_split, load_rows, parse_tasks, resolve_features

TUNERS = ("random", "hyperband", "bayes")
TUNABLE_HEADS = ("mlp", "svm", "logreg", "linsvm", "knn", "hgb", "ridge", "margin")
MARGIN_ALIASES = ("margin", "arcface")  # the identity-space head (heads/margin.py)
EPOCH_HEADS = ("mlp", "margin")  # heads with training epochs (Hyperband can allocate them)
FINGERPRINT = "faceprobe-search.json"
PROJECT = "search"
DONE = "faceprobe-search-done.json"  # written by the chief when every trial is scored
ROLES = ("chief", "worker")
TRIAL_RECORD = "faceprobe-trial.json"
CHIEF_WAIT_S = 600  # how long a worker waits for the chief to start serving
CALL_TIMEOUT_S = 10.0  # a worker's call to the chief: retried after this, unless the search is done
TASK_METRIC = "task_"  # per-task validation scores are recorded as trial metrics task_<name>


def search_space(head: str, tasks: Sequence[str], max_epochs: int) -> list[dict[str, Any]]:
    """The space as data (so it can be fingerprinted and declared on a HyperParameters)."""
    if head == "mlp":
        # defaults = the untuned head's (KerasHead()): a fresh random or bayes search runs them
        # as its first trial, so the tuned head never scores below the untuned one on validation
        space = [
            # 1024 wide (with dropout up to 0.7) was tried: no better on UTKFace (0.883/0.829/5.32
            # on test, mean of 4 seeds, against 0.880/0.832/5.50 for the default) and it took 20
            # trials on 10k rows from 1.6 minutes to 3.4 (bench/heads.py)
            {"name": "depth", "type": "int", "min": 1, "max": 3, "default": 1},
            {"name": "width", "type": "choice", "values": [128, 256, 512], "default": 256},
            {"name": "dropout", "type": "float", "min": 0.0, "max": 0.6, "step": 0.1,
             "default": 0.3},
            {"name": "lr", "type": "float", "min": 1e-4, "max": 3e-3, "sampling": "log",
             "default": 1e-3},
        ]
        if len(tasks) > 1:
            space += [{"name": f"lw_{t}", "type": "float", "min": 0.5, "max": 2.0, "default": 1.0}
                      for t in tasks]
        return space
    if head == "margin":
        # defaults = the untuned MarginHead()'s (run as the first trial, as for the mlp)
        return [
            # 256 beat 128 on 512-d synthetic embeddings (heads/margin.py docstring)
            {"name": "out_dim", "type": "choice", "values": [64, 128, 256, 512], "default": 128},
            {"name": "depth", "type": "int", "min": 0, "max": 1, "default": 0},
            {"name": "width", "type": "choice", "values": [256, 512, 1024], "default": 512},
            {"name": "s", "type": "float", "min": 16.0, "max": 64.0, "sampling": "log",
             "default": 30.0},
            {"name": "m", "type": "float", "min": 0.1, "max": 0.6, "default": 0.3},
        ]
    return {
        # gamma = gamma_mult / dim: 1 is sklearn's "scale" on standardised inputs; above ~3 the
        # kernel is near-diagonal on 128-d embeddings (gamma_mult 6.7: UTKFace race 0.60)
        "svm": [{"name": "C", "type": "float", "min": 0.1, "max": 30.0, "sampling": "log"},
                {"name": "gamma_mult", "type": "float", "min": 0.1, "max": 3.0,
                 "sampling": "log"}],
        "logreg": [{"name": "C", "type": "float", "min": 1e-3, "max": 10.0, "sampling": "log"}],
        "linsvm": [{"name": "C", "type": "float", "min": 1e-3, "max": 10.0, "sampling": "log"}],
        "ridge": [{"name": "alpha", "type": "float", "min": 1e-2, "max": 1e3, "sampling": "log"}],
        "knn": [{"name": "n_neighbors", "type": "int", "min": 3, "max": 60}],
        "hgb": [{"name": "learning_rate", "type": "float", "min": 0.02, "max": 0.3,
                 "sampling": "log"},
                {"name": "max_iter", "type": "choice", "values": [100, 200, 400]}],
    }[head]


def _declare(hp, space: list[dict[str, Any]]) -> None:
    for s in space:
        if s["type"] == "int":
            hp.Int(s["name"], s["min"], s["max"], default=s.get("default"))
        elif s["type"] == "choice":
            hp.Choice(s["name"], s["values"], default=s.get("default"))
        else:
            hp.Float(s["name"], s["min"], s["max"], step=s.get("step"),
                     sampling=s.get("sampling", "linear"), default=s.get("default"))


def _defaults_first(oracle) -> None:
    """Make the oracle's first trial the space's defaults (KerasTuner 1.4 draws it at random)."""
    populate = oracle.populate_space

    def populate_space(trial_id):
        if not oracle.trials:
            return {"status": "RUNNING", "values": oracle.hyperparameters.copy().values}
        return populate(trial_id)

    oracle.populate_space = populate_space


def head_params(head: str, values: Mapping[str, Any], tasks: Sequence[str], dim: int
                ) -> dict[str, Any]:
    """A trial's hyperparameter values -> constructor parameters of the head."""
    v = dict(values)
    if head == "mlp":
        params = {"hidden": [int(v["width"])] * int(v["depth"]), "dropout": float(v["dropout"]),
                  "lr": float(v["lr"])}
        lw = {t: float(v[f"lw_{t}"]) for t in tasks if f"lw_{t}" in v}
        if lw:
            params["loss_weights"] = lw
        return params
    if head == "margin":
        return {"out_dim": int(v["out_dim"]), "hidden": [int(v["width"])] * int(v["depth"]),
                "s": float(v["s"]), "m": float(v["m"])}
    if head == "svm":
        return {"C": float(v["C"]), "gamma": float(v["gamma_mult"]) / dim}
    keys = {"logreg": ("C",), "linsvm": ("C",), "ridge": ("alpha",), "knn": ("n_neighbors",),
            "hgb": ("learning_rate", "max_iter")}[head]
    return {k: v[k] for k in keys}


def task_scores(y: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                tasks: Sequence[str], train_age_median: float | None) -> dict[str, float]:
    """Each task's validation score, higher is better: balanced accuracy for a categorical task,
    ``1 - MAE / MAE_median`` for age (tasks that cannot be scored are left out)."""
    m = compute_metrics(y, outputs, list(tasks))
    scores = {}
    for t, r in m["tasks"].items():
        if t == AGE:
            if r["mae"] is None or train_age_median is None:
                continue
            ya = task_labels(AGE, y)
            ok = present(AGE, ya)
            base = float(np.abs(ya[ok] - train_age_median).mean()) or 1.0
            scores[t] = 1.0 - r["mae"] / base
        elif r["balanced_accuracy"] is not None:
            scores[t] = float(r["balanced_accuracy"])
    return scores


def per_task_best(trials: Sequence[Any], tasks: Sequence[str]
                  ) -> dict[str, tuple[Any, float]]:
    """For each task, the scored trial with the best validation score on that task alone (a
    baseline is one independent model per task, so this is exact, not a compromise)."""
    best: dict[str, tuple[Any, float]] = {}
    for trial in trials:
        if trial.score is None:
            continue
        for t in tasks:
            name = TASK_METRIC + t
            if not trial.metrics.exists(name):
                continue
            v = trial.metrics.get_last_value(name)
            if v is not None and (t not in best or v > best[t][1]):
                best[t] = (trial, float(v))
    return best


@dataclass
class TuneResult:
    best_params: dict[str, Any]
    best_score: float
    trials: int
    trials_run_now: int
    metrics: dict[str, Any]
    model: Any
    bundle: Path | None
    seconds: float



def _make_tuner_class():
    import keras_tuner as kt

    class HeadTuner(kt.engine.base_tuner.BaseTuner):
        """Runs one head fit per trial; see the module docstring."""

        def __init__(self, oracle, *, run: Callable[[Any], float], log, **kw):
            self._run = run
            self._log = log
            self._started = time.perf_counter()
            self.trials_run_now = 0
            super().__init__(oracle, hypermodel=None, **kw)

        def _populate_initial_space(self):  # declared up front by the caller's oracle
            return

        def run_trial(self, trial, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                scores = self._run(trial.hyperparameters)
            except FaceprobeError as exc:
                raise _FatalWrap(str(exc)) from exc
            score = scores["score"]
            self.trials_run_now += 1
            record = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id,
                      "host": socket.gethostname(), "pid": os.getpid(), "score": score,
                      "seconds": round(time.perf_counter() - t0, 3)}
            path = os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_RECORD)
            with open(path, "w") as f:
                json.dump(record, f, indent=1)
            return scores

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            worker = self._is_worker()
            if worker:  # the chief scored it; the local copy has no score
                trial = self.oracle.get_trial(trial.trial_id)
                done = f"{self.trials_run_now} run here"
            else:
                done = f"{_scored(self.oracle)} scored"
            best = self.oracle.get_best_trials(1)
            best_score = best[0].score if best and best[0].score is not None else float("nan")
            values = _values(trial)
            score = "failed" if trial.score is None else f"{trial.score:.4f}"
            who = f"{self.tuner_id} " if worker else ""
            self._log(f"{who}trial {trial.trial_id}: score {score} (best {best_score:.4f}, "
                      f"{done}, {time.perf_counter() - self._started:.0f}s) "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))

        def save_model(self, trial_id, model, step=0):
            return

        def load_model(self, trial):
            return None

    class _FatalWrap(kt.errors.FatalError):
        pass

    return HeadTuner, _FatalWrap


def _values(trial: Any) -> dict[str, Any]:
    """A trial's hyperparameters without KerasTuner's own (``tuner/epochs`` ...)."""
    return {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}


def _scored(oracle) -> int:
    return len([t for t in oracle.trials.values() if t.score is not None])


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _atomic_json_writes() -> None:
    """KerasTuner writes trial.json / oracle.json in place, so a kill mid-write leaves an empty
    file that makes the next run crash on reload. Route its writer through tmp + rename."""
    from keras_tuner.src import utils as kt_utils

    if getattr(kt_utils.save_json, "_faceprobe_atomic", False):
        return

    def save_json(path, obj):
        text = json.dumps(obj)
        tmp = f"{path}.{os.getpid()}.tmp"  # chief and workers share the directory
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return text

    save_json._faceprobe_atomic = True
    kt_utils.save_json = save_json


def _drop_unreadable_trials(directory: Path) -> list[str]:
    """Trials whose trial.json a kill left unreadable (runs before atomic writes) are removed so
    the oracle re-runs them instead of the reload crashing."""
    import shutil

    dropped = []
    for tj in sorted((directory / PROJECT).glob("trial_*/trial.json")):
        try:
            json.loads(tj.read_text())
        except (OSError, ValueError):
            shutil.rmtree(tj.parent, ignore_errors=True)
            dropped.append(tj.parent.name)
    return dropped


def _check_fingerprint(directory: Path, fp: dict[str, Any]) -> None:
    path = directory / FINGERPRINT
    project = directory / PROJECT
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        if diff:
            raise ConfigError(
                f"search directory {directory} holds a search with another {', '.join(diff)}; "
                "its trials cannot be mixed with this one: use a new --dir, or delete that one "
                "to start over")
    elif project.exists():
        raise ConfigError(f"{project} exists without {FINGERPRINT}; use a new --dir")
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # chief and workers may start together: create-if-absent atomically, then compare
        tmp = directory / f".{FINGERPRINT}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(fp, indent=1, sort_keys=True))
        try:
            os.link(tmp, path)
        except FileExistsError:
            _check_fingerprint(directory, fp)
        finally:
            tmp.unlink()


def parse_oracle(value: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--oracle must be HOST:PORT (e.g. 10.0.0.5:8000), got {value!r}")
    return host.strip("[]"), int(port)


def _worker_id() -> str:
    # KerasTuner treats any id containing "chief" as the chief, so keep that word out of it
    host = socket.gethostname().replace("chief", "chf")
    return f"worker-{host}-{os.getpid()}"


@contextlib.contextmanager
def _kerastuner_env(role: str | None, host: str, port: int, tuner_id: str) -> Iterator[None]:
    keys = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    if role is None:
        for k in keys:
            os.environ.pop(k, None)
    else:
        os.environ.update(zip(keys, (tuner_id, host, str(port)), strict=True))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _SearchOver(Exception):
    """A worker found the chief gone and the search it was started for complete."""


def _search_done(directory: Path, trials: int) -> bool:
    """The chief has finished a search of at least ``trials`` trials in ``directory``."""
    try:
        done = json.loads((directory / DONE).read_text())
    except (OSError, ValueError):
        return False
    return int(done.get("trials", 0)) >= trials


def _mark_done(directory: Path, trials: int, scored: int) -> None:
    tmp = directory / f".{DONE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"trials": trials, "scored": scored}))
    os.replace(tmp, directory / DONE)


def _wait_for_chief(host: str, port: int, timeout: float,
                    done: Callable[[], bool] = lambda: False) -> bool:
    """Wait for the chief to serve; False (without waiting further) once ``done()`` says the
    search is already over."""
    import grpc

    # A fresh channel per second: one channel to a port nobody listens on yet backs off its
    # reconnects for up to minutes, so a worker started before the chief could miss the search.
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return False
        channel = grpc.insecure_channel(f"{host}:{port}")
        try:
            grpc.channel_ready_future(channel).result(timeout=1.0)
            return True
        except grpc.FutureTimeoutError:
            pass
        finally:
            channel.close()
        if time.monotonic() >= deadline:
            raise ConfigError(f"no tuning chief answered at {host}:{port} within {timeout:.0f}s; "
                              "start `faceprobe tune ... --role chief` first (or check the "
                              "address and firewall)")


class _PatientStub:
    """Stands in for KerasTuner's ``OracleClient.stub``: each call to the chief waits at most
    ``timeout`` s, then is retried, unless ``done()`` says the search is over (the chief is gone),
    which raises _SearchOver. KerasTuner's own calls wait an hour for a chief that has exited.
    Retrying is safe: CreateTrial returns the tuner's ongoing trial again, and a call only times
    out when the chief did not answer."""

    def __init__(self, stub, done: Callable[[], bool], timeout: float = CALL_TIMEOUT_S):
        self._stub, self._done, self._timeout = stub, done, timeout

    def __getattr__(self, name):
        import grpc

        method = getattr(self._stub, name)
        retry = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)

        def call(request, **kw):
            kw["timeout"] = self._timeout
            while True:
                try:
                    return method(request, **kw)
                except grpc.RpcError as exc:
                    if exc.code() not in retry:
                        raise
                    if self._done():
                        raise _SearchOver() from None
        return call


def _requeue_orphans(oracle, log: Callable[[str], None]) -> None:
    # A starting chief has no workers yet, so trials its saved state calls running were left by
    # workers of an earlier chief; KerasTuner would wait for them forever. Run them again.
    stale = sorted(t.trial_id for t in oracle.ongoing_trials.values())
    if stale:
        oracle.ongoing_trials.clear()
        oracle._retry_queue.extend(stale)
        log(f"chief: trials {', '.join(stale)} were left running by a previous chief; requeued")


def _serve_oracle(oracle, host: str, port: int, log: Callable[[str], None],
                  on_done: Callable[[], None] = lambda: None) -> None:
    """KerasTuner's chief server, ending as soon as the search is over (see the docstring)."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"the tuning chief cannot listen on {host}:{port} (port in use or not "
                          "an address of this machine); choose another --oracle")
    server.start()
    log(f"tuning chief serving the oracle on {host}:{port}; start workers with --role worker "
        f"--oracle HOST:{port}")
    last = -1
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(0.2)
            n = _scored(oracle)
            if n != last:
                last = n
                log(f"chief: {n}/{oracle.max_trials} trials scored; workers active: "
                    + (", ".join(sorted(oracle.ongoing_trials)) or "none"))
        on_done()  # before the server stops: a worker that then finds no chief reads it
    finally:
        server.stop(grace=2).wait()


def tune_store(store: Store | str | os.PathLike, tasks: str | Sequence[str] | None = None, *,
               head: str = "mlp", tuner: str = "random", trials: int = 20,
               directory: str | os.PathLike, out: str | os.PathLike | None = None,
               features: Sequence[str] | None = None, class_weighting: str = "inverse",
               seed: int = 0, max_epochs: int = 200, overwrite: bool = False,
               log: Callable[[str], None] | None = None, role: str | None = None,
               oracle: str | None = None, tuner_id: str | None = None) -> TuneResult:
    """Run (or continue) a search in ``directory``; refit the best and save it to ``out``.

    ``role='chief'`` serves the search at ``oracle`` (HOST:PORT to listen on) until workers have
    run every trial, then refits and saves; ``role='worker'`` runs trials for the chief at
    ``oracle`` and returns what it ran (no refit, no bundle; nothing when it finds the search
    already complete). ``directory`` must be shared. ``max_epochs`` caps the Keras head's epochs
    in every trial and in the refit (Hyperband gives trials fewer)."""
    import keras_tuner as kt

    log = log or (lambda s: None)
    if role not in (None, *ROLES):
        raise ConfigError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if role is not None and not oracle:
        raise ConfigError(f"--role {role} needs --oracle HOST:PORT (where the chief listens)")
    if oracle and role is None:
        raise ConfigError("--oracle is for a distributed search; add --role chief or worker")
    host, port = parse_oracle(oracle) if role else ("", 0)
    if role == "worker":
        tuner_id = tuner_id or _worker_id()
        if "chief" in tuner_id:
            raise ConfigError(f"worker id {tuner_id!r} must not contain 'chief'")
        out = None  # the chief alone refits and saves
    elif role == "chief":
        tuner_id = "chief"
    if head in MARGIN_ALIASES:
        head = "margin"
    if head not in TUNABLE_HEADS:
        raise ConfigError(f"--head must be one of {', '.join(TUNABLE_HEADS)}, got {head!r}")
    if tuner not in TUNERS:
        raise ConfigError(f"--tuner must be one of {', '.join(TUNERS)}, got {tuner!r}")
    if tuner == "hyperband" and head not in EPOCH_HEADS:
        raise ConfigError("--tuner hyperband allocates training epochs, which only the mlp and "
                          "margin heads have; use --tuner random or bayes for --head " + head)
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials!r}")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(f"max_epochs must be a positive integer, got {max_epochs!r}")
    if out is not None:
        check_out(out, overwrite)
    start = time.perf_counter()
    store = store if isinstance(store, Store) else Store(store)
    margin = head == "margin"
    if margin:
        from faceprobe.heads.margin import TASK
        from faceprobe.heads.margin_train import load_identity_rows

        if tasks not in (None, TASK, [TASK], (TASK,)):
            raise ConfigError(f"--head {head} learns an identity space; --tasks must be {TASK}, "
                              f"got {tasks!r}")
        tasks = [TASK]
        data = load_identity_rows(store, features, log=log)
    else:
        tasks = parse_tasks(tasks, store)
        data = load_rows(store, tasks, features)
    split = make_split(data, seed=seed)
    if not len(split.val):
        raise ConfigError("tuning needs validation rows; the split left none")
    log(f"{len(data)} usable rows; {split.description['text']}")
    groups = resolve_features(store, features)
    dim = sum(store.feature_dims[g] for g in groups)
    space = search_space(head, tasks, max_epochs)
    prov = store_provenance(store)
    fp = {"head": head, "tuner": tuner, "space": space, "tasks": tasks, "features": groups,
          "class_weighting": class_weighting, "seed": seed, "max_epochs": max_epochs,
          "store": {k: prov[k] for k in ("backbone", "weights_sha256", "records_sha256",
                                         "features")},
          "split_test_sha256": split.description["test_sha256"],
          "split_counts": split.description["counts"]}
    if head == "mlp":  # how each trial trains (and the refit), so older searches are refused
        fp["fit"] = {k: make_head("mlp").get_params()[k] for k in ("batch_size", "patience")}
    elif margin:
        from faceprobe.heads.margin import MarginHead

        fp["fit"] = {k: MarginHead().get_params()[k]
                     for k in ("batch_size", "patience", "lr", "val_fraction", "weight_decay")}
    directory = Path(directory)
    _check_fingerprint(directory, fp)
    _atomic_json_writes()
    if role != "worker":  # only one process may delete; the chief or a lone search
        dropped = _drop_unreadable_trials(directory)
        if dropped:
            log(f"re-running {len(dropped)} trial(s) a killed run left unreadable: "
                + ", ".join(dropped))

    train, val = data.subset(split.train), data.subset(split.val)
    y_age = task_labels(AGE, train.y) if AGE in tasks else None
    age_median = float(np.nanmedian(y_age)) if y_age is not None and \
        present(AGE, y_age).any() else None
    base = {"tasks": tasks, "features": groups, "class_weighting": class_weighting, "seed": seed}

    def run_margin(hp) -> dict[str, float]:
        from faceprobe.heads.margin import MarginHead
        from faceprobe.heads.margin_train import identification_accuracy

        model = MarginHead(features=groups, seed=seed,
                           epochs=int(hp.values.get("tuner/epochs", max_epochs)),
                           **head_params(head, hp.values, tasks, dim))
        model.fit(train)
        res = identification_accuracy(model.transform(val), val.identity)
        if res["top1"] is None:
            raise ConfigError("tuning the margin head needs validation identities with at least "
                              "2 images; the split's validation rows have none")
        return {"score": float(res["top1"]), TASK_METRIC + tasks[0]: float(res["top1"])}

    def run(hp) -> dict[str, float]:
        if margin:
            return run_margin(hp)
        params = {**base, **head_params(head, hp.values, tasks, dim)}
        if head == "mlp":  # the head's batch size and patience, as in the refit
            params["epochs"] = int(hp.values.get("tuner/epochs", max_epochs))
        model = make_head(head, **params)
        model.fit(train, validation=val, vocabularies=store.vocabularies)
        out_v = model.predict_outputs({g: val.X[g] for g in groups})
        per_task = task_scores(val.y, out_v, tasks, age_median)
        score = float(np.mean(list(per_task.values()))) if per_task else 0.0
        return {"score": score, **{TASK_METRIC + t: v for t, v in per_task.items()}}

    hp = kt.HyperParameters()
    _declare(hp, space)
    objective_ = kt.Objective("score", "max")
    oracle_seed = seed + 1  # KerasTuner reads seed 0 as "no seed" and draws a random one
    if tuner == "random":
        oracle_ = kt.oracles.RandomSearchOracle(objective=objective_, max_trials=trials,
                                               seed=oracle_seed, hyperparameters=hp,
                                               allow_new_entries=False)
    elif tuner == "bayes":
        oracle_ = kt.oracles.BayesianOptimizationOracle(
            objective=objective_, max_trials=trials, seed=oracle_seed, hyperparameters=hp,
            allow_new_entries=False, num_initial_points=min(5, trials))
    else:
        oracle_ = kt.oracles.HyperbandOracle(objective=objective_, max_epochs=max_epochs,
                                            factor=3, seed=oracle_seed, hyperparameters=hp,
                                            allow_new_entries=False)
        oracle_.max_trials = trials
    if head in EPOCH_HEADS and tuner != "hyperband":
        _defaults_first(oracle_)
    HeadTuner, fatal = _make_tuner_class()
    def search_over() -> bool:
        return _search_done(directory, trials)

    def finished_before_start() -> TuneResult:
        log(f"{tuner_id}: the search in {directory} is already complete; nothing to run")
        return TuneResult({}, float("nan"), 0, 0, {}, None, None, time.perf_counter() - start)

    if role == "worker" and not _wait_for_chief(host, port, CHIEF_WAIT_S, search_over):
        return finished_before_start()
    with _kerastuner_env(role, host, port, tuner_id or ""):
        t = HeadTuner(oracle_, run=run, log=log, directory=str(directory), project_name=PROJECT,
                      overwrite=False)
        if role == "worker":  # KerasTuner's OracleClient.stub: see _PatientStub
            t.oracle.stub = _PatientStub(t.oracle.stub, search_over)
        if role != "worker":
            t.oracle.max_trials = trials  # a resumed search may be asked for more than before
            done_before = len(t.oracle.trials)
            if done_before:
                log(f"resuming search in {directory}: {done_before} trials done, {trials} wanted")
        try:
            if role == "chief":
                t.oracle.verbose = 0
                _requeue_orphans(t.oracle, log)
                t.save()
                scored_before = _scored(t.oracle)
                _serve_oracle(t.oracle, host, port, log,
                              lambda: _mark_done(directory, trials, _scored(t.oracle)))
                t.trials_run_now = _scored(t.oracle) - scored_before
            else:
                t.search(verbose=0)
        except _SearchOver:  # a worker whose chief finished and left while it called
            log(f"{tuner_id}: the chief finished the search and stopped serving")
        except fatal as exc:
            raise ConfigError(str(exc)) from None
        if role == "worker":
            # no more oracle calls: the chief stops serving once the search is over, and
            # KerasTuner's client waits for a server forever (wait_for_ready)
            return TuneResult({}, float("nan"), t.trials_run_now, t.trials_run_now, {}, None,
                              None, time.perf_counter() - start)
        best = t.oracle.get_best_trials(1)

    if not best:
        raise ConfigError(f"no trial in {directory} produced a score; see the trial messages "
                          "in its trial_*/trial.json")
    best_values = _values(best[0])
    scored = _scored(t.oracle)
    if margin:
        return _refit_margin(best[0], best_values, head, tuner, directory, scored, data, split,
                             store, groups, seed, max_epochs, out, overwrite, log, start,
                             t.trials_run_now)
    params = {**base, **head_params(head, best_values, tasks, dim)}
    if head == "mlp":
        params["epochs"] = max_epochs  # the trials' fit: see the module docstring
    per_task = {}
    if head != "mlp" and len(tasks) > 1:
        per_task = per_task_best(list(t.oracle.trials.values()), tasks)
        params["task_params"] = {
            task: head_params(head, _values(trial), tasks, dim)
            for task, (trial, _) in per_task.items() if trial is not best[0]} or None
    model = make_head(head, **params)
    log(f"refitting the best ({best[0].score:.4f}): "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best_values.items()))
    for task, (trial, v) in per_task.items():
        log(f"  {task}: trial {trial.trial_id} ({TASK_METRIC}{task} {v:.4f}) "
            + ", ".join(f"{k}={_fmt(x)}" for k, x in _values(trial).items()))
    metrics = fit_on_split(model, data, split, store.vocabularies)
    return _save_refit(model, metrics, best[0], best_values, per_task, tuner, directory, scored,
                       t.trials_run_now, store, split, out, overwrite, start)


def _save_refit(model, metrics, best, best_values, per_task, tuner, directory, scored, run_now,
                store, split, out, overwrite, start) -> TuneResult:
    """Save the refitted head to ``out`` (when given) with the search's record as bundle.json's
    ``tuning``; the ``TuneResult``."""
    bundle = None
    if out is not None:
        bundle = save_bundle(
            model, out, store=store, split=split.description, metrics={"val": metrics},
            overwrite=overwrite,
            extra={"tuning": {"tuner": tuner, "directory": str(directory.resolve()),
                              "trials": scored, "best_score": best.score,
                              "best_hyperparameters": best_values,
                              "per_task": {task: {"trial": trial.trial_id, "score": v,
                                                  "hyperparameters": _values(trial)}
                                           for task, (trial, v) in per_task.items()}}})
    return TuneResult(best_values, float(best.score), scored, run_now, metrics, model, bundle,
                      time.perf_counter() - start)


def _refit_margin(best, best_values, head, tuner, directory, scored, data, split, store, groups,
                  seed, max_epochs, out, overwrite, log, start, run_now) -> TuneResult:
    """The margin head's refit: the best trial's fit again (same seed, same weights and score),
    then train + validation identities (see the module docstring)."""
    from faceprobe.heads.margin import MarginHead
    from faceprobe.heads.margin_train import fit_margin_on_split

    model = MarginHead(features=groups, seed=seed, epochs=max_epochs,
                       **head_params(head, best_values, [], 0))
    log(f"refitting the best ({best.score:.4f}): "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best_values.items()))
    metrics = fit_margin_on_split(model, data, split, log=log)
    return _save_refit(model, metrics, best, best_values, {}, tuner, directory, scored, run_now,
                       store, split, out, overwrite, start)
