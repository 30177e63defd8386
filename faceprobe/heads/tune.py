"""Hyperparameter search over heads with KerasTuner's oracles, resumable from a directory.

``tune_store`` is the whole run: check the options, load the rows and split them, check the
search directory, run the trials (alone, or as the chief or a worker of a distributed search)
and refit the best. The pieces, each with the decisions behind it:

- ``search_space``: the spaces per head, a trial's values -> head parameters, the seeded oracle;
- ``tune_trial``: one trial (fit on train, score on validation: the objective) and the
  KerasTuner runner that runs them;
- ``tune_state``: the directory's fingerprint and the repairs that keep it loadable;
- ``tune_distributed``: KerasTuner's chief/worker mode and the end-of-search bookkeeping;
- ``tune_refit``: the refit of the best trial and its bundle.

Imports run one way: this module -> those; ``tune_refit`` / ``tune_state`` / ``tune_distributed``
-> ``tune_trial`` -> ``search_space``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError
from faceprobe.heads.bundle import check_out
from faceprobe.heads.search_space import (
    EPOCH_HEADS,
    MARGIN_ALIASES,
    TUNABLE_HEADS,
    TUNERS,
    _values,
    make_oracle,
    search_space,
)
from faceprobe.heads.splits import make_split
from faceprobe.heads.train import load_rows, parse_tasks, resolve_features
from faceprobe.heads.tune_distributed import (
    _kerastuner_env,
    _PatientStub,
    _search_done,
    _SearchOver,
    _wait_for_chief,
    check_role,
    run_chief,
)
from faceprobe.heads.tune_refit import refit_best, save_refit
from faceprobe.heads.tune_state import (
    PROJECT,
    _atomic_json_writes,
    _check_fingerprint,
    _drop_unreadable_trials,
    requeue_unfinished,
    search_fingerprint,
)
from faceprobe.heads.tune_trial import SearchSetup, _make_tuner_class, _scored, trial_function


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


def _check_options(head: str, tuner: str, trials: Any, max_epochs: Any) -> str:
    """The head's canonical name, once the search options are valid."""
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
    return head


def _load_search(store: Store, head: str, tasks: str | Sequence[str] | None,
                 features: Sequence[str] | None, class_weighting: str, seed: int,
                 max_epochs: int, log: Callable[[str], None]) -> SearchSetup:
    """The rows a search uses (with an identity for the margin head) and their split."""
    if head == "margin":
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
    return SearchSetup(head, store, data, split, list(tasks), groups, dim, class_weighting, seed,
                       max_epochs)


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
    import keras_tuner  # noqa: F401  (first: without it nothing is read, and not timed)

    log = log or (lambda s: None)
    host, port, tuner_id = check_role(role, oracle, tuner_id)
    if role == "worker":
        out = None  # the chief alone refits and saves
    head = _check_options(head, tuner, trials, max_epochs)
    if out is not None:
        check_out(out, overwrite)
    start = time.perf_counter()
    store = store if isinstance(store, Store) else Store(store)
    setup = _load_search(store, head, tasks, features, class_weighting, seed, max_epochs, log)
    space = search_space(head, setup.tasks, max_epochs)
    directory = Path(directory)
    _check_fingerprint(directory, search_fingerprint(setup, tuner, space))
    _atomic_json_writes()
    if role != "worker":  # only one process may delete; the chief or a lone search
        dropped = _drop_unreadable_trials(directory)
        if dropped:
            log(f"re-running {len(dropped)} trial(s) a killed run left unreadable: "
                + ", ".join(dropped))

    run = trial_function(setup)
    oracle_ = make_oracle(head, tuner, space, trials, seed, max_epochs)
    HeadTuner, fatal = _make_tuner_class()

    def search_over() -> bool:
        return _search_done(directory, trials)

    def finished_before_start() -> TuneResult:
        log(f"{tuner_id}: the search in {directory} is already complete; nothing to run")
        return TuneResult({}, float("nan"), 0, 0, {}, None, None, time.perf_counter() - start)

    if role == "worker" and not _wait_for_chief(host, port, done=search_over):
        return finished_before_start()
    with _kerastuner_env(role, host, port, tuner_id or ""):
        t = HeadTuner(oracle_, run=run, log=log, directory=str(directory), project_name=PROJECT,
                      overwrite=False)
        if role == "worker":  # KerasTuner's OracleClient.stub: see _PatientStub
            t.oracle.stub = _PatientStub(t.oracle.stub, search_over)
        if role != "worker":
            t.oracle.max_trials = trials  # a resumed search may be asked for more than before
            # nothing runs trials yet (a starting chief has no workers): unfinished ones re-run
            requeue_unfinished(t.oracle, log)
            done_before = len(t.oracle.trials)
            if done_before:
                log(f"resuming search in {directory}: {done_before} trials done, {trials} wanted")
        try:
            if role == "chief":
                t.trials_run_now = run_chief(t, directory, trials, host, port, log)
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
    model, metrics, per_task = refit_best(setup, best[0], best_values,
                                          list(t.oracle.trials.values()), log)
    bundle = None
    if out is not None:
        bundle = save_refit(model, metrics, setup, out, overwrite=overwrite, best=best[0],
                            best_values=best_values, per_task=per_task, tuner=tuner,
                            directory=directory, scored=scored)
    return TuneResult(best_values, float(best[0].score), scored, t.trials_run_now, metrics, model,
                      bundle, time.perf_counter() - start)
