"""One trial of a head search: fit a head from the trial's values, score it on the validation
rows (the objective), and the KerasTuner runner that does so for every trial.

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
  used because the loss weights being tuned rescale it. Every trial also records each task's
  score as ``task_<name>`` (``per_task_best`` reads them for a baseline's refit).
- A Keras trial is the same fit as the final model's first fit: the head's own batch size (256)
  and patience (10), at most ``max_epochs`` epochs (default 200, the head's default; Hyperband's
  ``tuner/epochs`` caps a trial lower), early stopping on the validation rows. Trials used to run
  with batch 1024, patience 4 and 30 epochs while the refit used 256/10/200, so the best trial was
  chosen for a training the final model did not get. 20 trials on UTKFace's 2,694 train rows took
  2.5-3.7 minutes on the shared 2-core box.
- A margin (identity-space) trial fits on the split's train identities (early stopping on
  held-out images of those identities, the head's own) and scores top-1 identification on the
  validation identities, which the split keeps disjoint from training: each one's first image
  enrols, the others probe. That is what the head is for (people it has not seen), not held-out
  images of known people.
- Each trial directory gets ``faceprobe-trial.json`` naming the tuner id, host and pid that ran
  it, which KerasTuner itself does not record.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE
from faceprobe.embed.store import Store, StoreData
from faceprobe.errors import ConfigError, FaceprobeError
from faceprobe.heads.baselines import make_head
from faceprobe.heads.common import present, task_labels
from faceprobe.heads.evaluate import compute_metrics
from faceprobe.heads.search_space import _values, head_params
from faceprobe.heads.splits import Split

TRIAL_RECORD = "faceprobe-trial.json"
TASK_METRIC = "task_"  # per-task validation scores are recorded as trial metrics task_<name>


@dataclass
class SearchSetup:
    """What every trial of a search and its refit share: the head, the rows and their split."""

    head: str
    store: Store
    data: StoreData
    split: Split
    tasks: list[str]
    groups: list[str]
    dim: int
    class_weighting: str
    seed: int
    max_epochs: int

    @property
    def base(self) -> dict[str, Any]:
        """The head parameters no trial changes."""
        return {"tasks": self.tasks, "features": self.groups,
                "class_weighting": self.class_weighting, "seed": self.seed}


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


def trial_function(s: SearchSetup) -> Callable[[Any], dict[str, float]]:
    """``run(hp)``: fit the head with a trial's hyperparameters on the train rows and return its
    validation scores (``score``, the objective, and ``task_<name>`` per task)."""
    head, tasks, groups, dim, seed, max_epochs = (s.head, s.tasks, s.groups, s.dim, s.seed,
                                                  s.max_epochs)
    train, val = s.data.subset(s.split.train), s.data.subset(s.split.val)
    y_age = task_labels(AGE, train.y) if AGE in tasks else None
    age_median = float(np.nanmedian(y_age)) if y_age is not None and \
        present(AGE, y_age).any() else None

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
        if head == "margin":
            return run_margin(hp)
        params = {**s.base, **head_params(head, hp.values, tasks, dim)}
        if head == "mlp":  # the head's batch size and patience, as in the refit
            params["epochs"] = int(hp.values.get("tuner/epochs", max_epochs))
        model = make_head(head, **params)
        model.fit(train, validation=val, vocabularies=s.store.vocabularies)
        out_v = model.predict_outputs({g: val.X[g] for g in groups})
        per_task = task_scores(val.y, out_v, tasks, age_median)
        score = float(np.mean(list(per_task.values()))) if per_task else 0.0
        return {"score": score, **{TASK_METRIC + t: v for t, v in per_task.items()}}

    return run


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


def _scored(oracle) -> int:
    return len([t for t in oracle.trials.values() if t.score is not None])


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
