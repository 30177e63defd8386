"""The end of a search: the head refitted with the best trial's values, saved with the search's
record as bundle.json's ``tuning``.

Decisions:
- A scikit-learn baseline is one independent model per task, so its refit takes each task's
  hyperparameters from the trial that scored best on that task (``task_params``; every trial
  records ``task_<name>`` scores); the mean objective only ranks trials. The Keras head shares
  one trunk, so it takes the best trial whole.
- The Keras refit repeats the best trial's fit (same seed: the same weights and validation
  score; the trial's batch size, patience and ``max_epochs``, see ``tune_trial``) and then
  retrains on train + validation for the epoch count it chose.
- The margin head's refit repeats the best trial's fit, then retrains on train + validation
  identities.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from faceprobe.heads.baselines import make_head
from faceprobe.heads.bundle import save_bundle
from faceprobe.heads.search_space import _values, head_params
from faceprobe.heads.train import fit_on_split
from faceprobe.heads.tune_trial import TASK_METRIC, SearchSetup, _fmt, per_task_best


def refit_best(s: SearchSetup, best: Any, best_values: dict[str, Any], trials: Sequence[Any],
               log: Callable[[str], None]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(model, validation metrics, per task: (trial, score) a baseline took its values from)."""
    if s.head == "margin":
        model, metrics = _refit_margin(s, best, best_values, log)
        return model, metrics, {}
    head, tasks, dim = s.head, s.tasks, s.dim
    params = {**s.base, **head_params(head, best_values, tasks, dim)}
    if head == "mlp":
        params["epochs"] = s.max_epochs  # the trials' fit: see the module docstring
    per_task = {}
    if head != "mlp" and len(tasks) > 1:
        per_task = per_task_best(trials, tasks)
        params["task_params"] = {
            task: head_params(head, _values(trial), tasks, dim)
            for task, (trial, _) in per_task.items() if trial is not best} or None
    model = make_head(head, **params)
    log(f"refitting the best ({best.score:.4f}): "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best_values.items()))
    for task, (trial, v) in per_task.items():
        log(f"  {task}: trial {trial.trial_id} ({TASK_METRIC}{task} {v:.4f}) "
            + ", ".join(f"{k}={_fmt(x)}" for k, x in _values(trial).items()))
    metrics = fit_on_split(model, s.data, s.split, s.store.vocabularies)
    return model, metrics, per_task


def _refit_margin(s: SearchSetup, best: Any, best_values: dict[str, Any],
                  log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The margin head's refit: the best trial's fit again (same seed, same weights and score),
    then train + validation identities (see the module docstring)."""
    from faceprobe.heads.margin import MarginHead
    from faceprobe.heads.margin_train import fit_margin_on_split

    model = MarginHead(features=s.groups, seed=s.seed, epochs=s.max_epochs,
                       **head_params(s.head, best_values, [], 0))
    log(f"refitting the best ({best.score:.4f}): "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best_values.items()))
    metrics = fit_margin_on_split(model, s.data, s.split, log=log)
    return model, metrics


def save_refit(model: Any, metrics: dict[str, Any], s: SearchSetup, out: str | os.PathLike, *,
               overwrite: bool, best: Any, best_values: dict[str, Any],
               per_task: dict[str, Any], tuner: str, directory: Path, scored: int) -> Path:
    """Save the refitted head to ``out`` with the search's record as bundle.json's ``tuning``."""
    return save_bundle(
        model, out, store=s.store, split=s.split.description, metrics={"val": metrics},
        overwrite=overwrite,
        extra={"tuning": {"tuner": tuner, "directory": str(directory.resolve()),
                          "trials": scored, "best_score": best.score,
                          "best_hyperparameters": best_values,
                          "per_task": {task: {"trial": trial.trial_id, "score": v,
                                              "hyperparameters": _values(trial)}
                                       for task, (trial, v) in per_task.items()}}})
