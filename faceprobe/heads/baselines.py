"""scikit-learn baselines with the Keras head's fit/predict contract: one model per task.

Decisions:
- Each task gets ``StandardScaler -> estimator`` fitted on the rows where that task is labelled.
  Kinds and their (classifier, age regressor): ``logreg`` (LogisticRegression, Ridge), ``linsvm``
  (LinearSVC, Ridge), ``svm`` and ``svr`` (RBF SVC, RBF SVR), ``knn`` (cosine k-NN, cosine k-NN
  regressor), ``hgb`` (HistGradientBoosting both), ``ridge`` (RidgeClassifier, Ridge).
- Class weights are the same inverse-frequency vector as the Keras head's (common.class_weights,
  proportional to sklearn's 'balanced'), passed as ``class_weight``; k-NN has no such parameter
  and is unweighted.
- Probabilities: models with ``predict_proba`` use it; LinearSVC is calibrated (sigmoid, 3-fold,
  ``ensemble=False``: one final model) because that costs little; the RBF SVC is not by default
  (``calibrate=None``) since calibration refits it 3 more times, so its "probabilities" are a
  softmax over its one-vs-rest decision values, whose argmax is SVC's own prediction. RidgeClassifier
  likewise. ``SVC(probability=True)`` is deprecated in scikit-learn 1.9 and would cost the same
  5-fold refit.
- Fits and predictions run under ``threadpool_limits(1)``: with OpenMP on the 2 shared cores,
  HistGradientBoosting took >5x longer on 2 threads than on 1 (barrier spinning while other
  processes hold the cores), the same effect as for torch (see common.py).
- ``task_params`` overrides hyperparameters for single tasks ({"race": {"C": 2.0}}): the models
  are independent, so the tuner picks each task's values from its own validation score (see
  tune_refit.py) instead of one compromise for all tasks.
- Age is regressed on the standardised target (mean/std kept in ``age_scale_``), so SVR's
  ``epsilon`` and ``C`` mean the same whatever the age range; predictions are clipped at 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from faceprobe.data.vocab import AGE
from faceprobe.errors import ConfigError
from faceprobe.heads.common import (
    HeadMixin,
    as_dataset,
    check,
    check_choice,
    check_number,
    class_weights,
    concat_features,
    feature_groups_of,
    features_of,
    present,
    resolve_tasks,
    softmax,
    task_labels,
    vocab_for,
)

KINDS = ("logreg", "linsvm", "svm", "svr", "knn", "hgb", "ridge")
HEAD = "SklearnHead"


class SklearnHead(HeadMixin):
    """One scikit-learn pipeline per task; ``kind`` picks the family."""

    _NAME = HEAD
    _PARAMS = ("kind", "tasks", "C", "gamma", "alpha", "epsilon", "n_neighbors", "max_iter",
               "learning_rate", "calibrate", "class_weighting", "features", "seed",
               "task_params")
    # the hyperparameters ``task_params`` may set per task (the model family stays shared)
    TASK_TUNABLE = ("C", "gamma", "alpha", "epsilon", "n_neighbors", "max_iter", "learning_rate")

    def __init__(self, kind: str = "logreg", tasks: Sequence[str] | str | None = None, *,
                 C: float = 1.0, gamma: str | float = "scale", alpha: float = 1.0,
                 epsilon: float = 0.1, n_neighbors: int = 15, max_iter: int = 100,
                 learning_rate: float = 0.1, calibrate: bool | None = None,
                 class_weighting: str = "inverse", features: Sequence[str] | None = None,
                 seed: int = 0, task_params: Mapping[str, Mapping[str, Any]] | None = None):
        self.kind = kind
        self.tasks = tasks
        self.C = C
        self.gamma = gamma
        self.alpha = alpha
        self.epsilon = epsilon
        self.n_neighbors = n_neighbors
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.calibrate = calibrate
        self.class_weighting = class_weighting
        self.features = features
        self.seed = seed
        self.task_params = task_params

    def __repr__(self) -> str:
        return f"SklearnHead(kind={self.kind!r}, tasks={self.tasks!r})"

    def _validate(self) -> None:
        check_choice(HEAD, "kind", self.kind, KINDS)
        check_number(HEAD, "C", self.C, 0.0, lo_open=True)
        check(HEAD, "gamma", self.gamma in ("scale", "auto") or (
            isinstance(self.gamma, (int, float)) and not isinstance(self.gamma, bool)
            and self.gamma > 0), "'scale', 'auto' or a positive number", self.gamma)
        check_number(HEAD, "alpha", self.alpha, 0.0)
        check_number(HEAD, "epsilon", self.epsilon, 0.0)
        check_number(HEAD, "n_neighbors", self.n_neighbors, 1, integer=True)
        check_number(HEAD, "max_iter", self.max_iter, 1, integer=True)
        check_number(HEAD, "learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        check_choice(HEAD, "calibrate", self.calibrate, (None, True, False))
        check_choice(HEAD, "class_weighting", self.class_weighting, ("inverse", "none"))
        check_number(HEAD, "seed", self.seed, 0, integer=True)
        tp = self.task_params
        check(HEAD, "task_params", tp is None or (isinstance(tp, Mapping) and all(
            isinstance(v, Mapping) for v in tp.values())),
            "a mapping of task -> {parameter: value}", tp)
        for t, over in (tp or {}).items():
            bad = [k for k in over if k not in self.TASK_TUNABLE]
            if bad:
                raise ConfigError(f"{HEAD}: task_params[{t!r}] sets {', '.join(map(repr, bad))}; "
                                  f"per task only {', '.join(self.TASK_TUNABLE)} can be set")

    def _for_task(self, task: str) -> SklearnHead:
        """This head with ``task_params[task]`` applied (validated like the shared values)."""
        over = (self.task_params or {}).get(task)
        if not over:
            return self
        head = SklearnHead(**{**self.get_params(), **over, "task_params": None})
        try:
            head._validate()
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in task_params[{task!r}])") from None
        return head

    def _classifier(self, cw: dict[int, float] | None):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression, RidgeClassifier
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.svm import SVC, LinearSVC

        k, seed = self.kind, int(self.seed)
        if k == "logreg":
            return LogisticRegression(C=self.C, max_iter=max(int(self.max_iter), 1000),
                                      class_weight=cw)
        if k == "linsvm":
            est = LinearSVC(C=self.C, class_weight=cw, random_state=seed, max_iter=5000)
            return est if self.calibrate is False else CalibratedClassifierCV(
                est, cv=3, ensemble=False)
        if k in ("svm", "svr"):
            est = SVC(C=self.C, gamma=self.gamma, class_weight=cw, random_state=seed,
                      decision_function_shape="ovr")
            return CalibratedClassifierCV(est, cv=3, ensemble=False) if self.calibrate else est
        if k == "knn":
            return KNeighborsClassifier(n_neighbors=int(self.n_neighbors), metric="cosine",
                                        weights="distance", algorithm="brute")
        if k == "hgb":
            return HistGradientBoostingClassifier(
                max_iter=int(self.max_iter), learning_rate=self.learning_rate,
                class_weight=cw, random_state=seed, early_stopping=True)
        return RidgeClassifier(alpha=self.alpha, class_weight=cw)

    def _regressor(self):
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import Ridge
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.svm import SVR

        k = self.kind
        if k in ("svm", "svr"):
            return SVR(C=self.C, gamma=self.gamma, epsilon=self.epsilon)
        if k == "knn":
            return KNeighborsRegressor(n_neighbors=int(self.n_neighbors), metric="cosine",
                                       weights="distance", algorithm="brute")
        if k == "hgb":
            return HistGradientBoostingRegressor(max_iter=int(self.max_iter),
                                                 learning_rate=self.learning_rate,
                                                 random_state=int(self.seed), early_stopping=True)
        return Ridge(alpha=self.alpha)

    def fit(self, data: Any, y: Mapping | None = None, *, validation: Any = None,
            vocabularies: Mapping[str, list[str] | None] | None = None,
            callbacks: Sequence[Any] | None = None) -> SklearnHead:
        """Fit one pipeline per task on its labelled rows. ``validation`` is accepted for the
        shared contract and unused (these models have no early stopping on it)."""
        self._validate()
        with threadpool_limits(1):
            return self._fit(data, y, vocabularies, callbacks)

    def _fit(self, data, y, vocabularies, callbacks) -> SklearnHead:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        ds = as_dataset(data, y)
        tasks = resolve_tasks(self.tasks, ds.y, HEAD)
        groups = features_of(ds.X, self.features)
        x = concat_features(ds.X, groups)
        unknown = [t for t in (self.task_params or {}) if t not in tasks]
        if unknown:
            raise ConfigError(f"{HEAD}: task_params names task(s) {', '.join(unknown)} that are "
                              f"not fitted; the tasks are {', '.join(tasks)}")
        self.tasks_ = tasks
        self.outputs_ = list(tasks)
        self.feature_groups_ = {g: int(ds.X[g].shape[1]) for g in groups}
        self.vocabularies_, self.class_weights_, self.models_ = {}, {}, {}
        self.fit_seconds_ = {}
        for i, t in enumerate(tasks):
            yt = task_labels(t, ds.y)
            rows = present(t, yt)
            if not rows.any():
                raise ConfigError(f"{HEAD}: task {t!r} has no labelled training rows")
            start = time.perf_counter()
            if t == AGE:
                self.vocabularies_[t] = None
                mu, sd = float(yt[rows].mean()), float(yt[rows].std()) or 1.0
                self.age_scale_ = {"mean": mu, "std": sd}
                model = make_pipeline(StandardScaler(), self._for_task(t)._regressor())
                model.fit(x[rows], (yt[rows] - mu) / sd)
            else:
                voc = vocab_for(t, yt, vocabularies)
                self.vocabularies_[t] = voc
                w = class_weights(yt, len(voc), self.class_weighting)
                self.class_weights_[t] = w.tolist()
                cw = {c: float(w[c]) for c in np.unique(yt[rows])} \
                    if self.class_weighting == "inverse" else None
                model = make_pipeline(StandardScaler(), self._for_task(t)._classifier(cw))
                model.fit(x[rows], yt[rows].astype(np.int64))
            self.models_[t] = model
            self.fit_seconds_[t] = time.perf_counter() - start
            for cb in callbacks or ():
                cb(i, {"task": t, "seconds": self.fit_seconds_[t]})
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise ConfigError(f"{HEAD}: not fitted yet; call fit() first")

    def predict_outputs(self, X: Any) -> dict[str, np.ndarray]:
        """Class probabilities (n, k) per categorical task over the full vocabulary; age in years."""
        self._check_fitted()
        with threadpool_limits(1):
            return self._predict_outputs(X)

    def _predict_outputs(self, X: Any) -> dict[str, np.ndarray]:
        ds = as_dataset(X)
        x = concat_features(ds.X, list(self.feature_groups_))
        out: dict[str, np.ndarray] = {}
        for t in self.tasks_:
            model = self.models_[t]
            if t == AGE:
                if len(x) == 0:
                    out[t] = np.zeros(0, np.float32)
                    continue
                s = self.age_scale_
                out[t] = np.maximum(model.predict(x) * s["std"] + s["mean"], 0.0).astype(np.float32)
                continue
            k = len(self.vocabularies_[t])
            proba = np.zeros((len(x), k), dtype=np.float32)
            if len(x):
                classes = model.classes_
                if hasattr(model, "predict_proba"):
                    p = model.predict_proba(x)
                else:
                    d = model.decision_function(x)
                    p = np.stack([-d, d], axis=1) if d.ndim == 1 else d
                    p = softmax(p)
                proba[:, classes] = p
            out[t] = proba
        return out

    def get_state(self) -> dict[str, Any]:
        self._check_fitted()
        params = self.get_params()
        params["tasks"] = list(self.tasks_)
        params["features"] = list(self.feature_groups_)
        state = {"params": params, "tasks": self.tasks_, "vocabularies": self.vocabularies_,
                 "feature_groups": self.feature_groups_, "class_weights": self.class_weights_,
                 "fit_seconds": self.fit_seconds_}
        if hasattr(self, "age_scale_"):
            state["age_scale"] = self.age_scale_
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], models: Mapping[str, Any]) -> SklearnHead:
        head = cls(**state["params"])
        head.tasks_ = list(state["tasks"])
        head.outputs_ = list(state["tasks"])
        head.vocabularies_ = dict(state["vocabularies"])
        head.feature_groups_ = feature_groups_of(state)
        head.class_weights_ = dict(state.get("class_weights", {}))
        head.fit_seconds_ = dict(state.get("fit_seconds", {}))
        if "age_scale" in state:
            head.age_scale_ = dict(state["age_scale"])
        head.models_ = dict(models)
        return head


def make_head(kind: str, **params: Any):
    """``mlp`` -> KerasHead, a scikit-learn kind -> SklearnHead (params passed through)."""
    if kind == "mlp":
        from faceprobe.heads.keras_head import KerasHead

        return KerasHead(**params)
    if kind not in KINDS:
        raise ConfigError(f"head must be one of mlp, {', '.join(KINDS)}, got {kind!r}")
    return SklearnHead(kind, **params)
