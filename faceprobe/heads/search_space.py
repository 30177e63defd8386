"""The hyperparameter spaces of the tunable heads, how a trial's values become a head's
parameters, and the KerasTuner oracle that draws them.

Decisions:
- The oracle is seeded with ``seed + 1``: KerasTuner's ``Oracle`` takes ``seed or
  random.randint(1, 10000)``, so the default seed 0 made every search draw different trials
  (three bayes SVM searches on UTKFace with "seed 0" gave test gender 0.900, 0.889 and 0.886).
- Hyperband's ``tuner/epochs`` is the epoch budget of a trial; trials are trained from scratch
  (no warm start from the parent bracket), which keeps a trial a pure function of its
  hyperparameters. Hyperband only applies to the heads with epochs (``EPOCH_HEADS``).
- The space's defaults are the untuned head's, and a fresh random or bayes search of a head with
  epochs runs them as its first trial (``_defaults_first``), so the tuned head's validation score
  is never below the untuned one's.
- The identity-space head (``margin``, alias ``arcface``; heads/margin.py) is searched over
  out_dim, hidden depth/width, ArcFace's scale ``s`` and margin ``m``.
- The space is plain data (``search_space``) so the search directory's fingerprint can record
  it; ``tune_state`` refuses a directory searched over another space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TUNERS = ("random", "hyperband", "bayes")
TUNABLE_HEADS = ("mlp", "svm", "logreg", "linsvm", "knn", "hgb", "ridge", "margin")
MARGIN_ALIASES = ("margin", "arcface")  # the identity-space head (heads/margin.py)
EPOCH_HEADS = ("mlp", "margin")  # heads with training epochs (Hyperband can allocate them)


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


def make_oracle(head: str, tuner: str, space: list[dict[str, Any]], trials: int, seed: int,
                max_epochs: int):
    """The KerasTuner oracle of a search, with ``space`` declared on it."""
    import keras_tuner as kt

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
    return oracle_


def _values(trial: Any) -> dict[str, Any]:
    """A trial's hyperparameters without KerasTuner's own (``tuner/epochs`` ...)."""
    return {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
