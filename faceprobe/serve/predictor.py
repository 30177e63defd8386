"""The bundle's outputs as the web app shows them: per task a label and its probability, or years."""

from __future__ import annotations

from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE, AGE_GROUPS
from faceprobe.heads.bundle import Bundle
from faceprobe.serve.responses import num

AGE_GROUP = "age_group"
_AGE_MIDPOINTS = np.array([1.0, 6.0, 14.5, 24.5, 34.5, 44.5, 54.5, 64.5, 75.0], np.float32)


class Predictor:
    """The bundle's outputs turned into per-task JSON (label + probability, or years)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        voc = bundle.vocabularies
        self.categorical = [t for t in bundle.tasks if voc.get(t)]
        self.vocab = {t: list(voc[t]) for t in self.categorical}
        self.has_age = AGE in bundle.tasks
        # same rule as `faceprobe score`: an age_group head also reports the expected age
        self.age_expected = (not self.has_age and AGE_GROUP in self.categorical
                             and self.vocab[AGE_GROUP] == AGE_GROUPS)
        self.bin_means = np.asarray(getattr(bundle.model, "age_bin_means_", _AGE_MIDPOINTS),
                                    np.float32)

    def predict(self, X: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in self.bundle.predict_outputs(X).items()}
        if self.has_age:
            out[AGE] = out[AGE].reshape(-1)
        if self.age_expected:
            out["age_expected"] = out[AGE_GROUP] @ self.bin_means
        return out

    def describe(self, out: dict[str, np.ndarray], i: int, full: bool = True) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for t in self.categorical:
            p = out[t][i]
            k = int(np.argmax(p))
            res[t] = {"label": self.vocab[t][k], "p": num(p[k])}
            if full:
                res[t]["probabilities"] = {c: num(v) for c, v in zip(self.vocab[t], p,
                                                                       strict=True)}
        if self.has_age:
            res[AGE] = {"years": num(out[AGE][i], 1)}
        if self.age_expected:
            res[AGE_GROUP]["expected_age"] = num(out["age_expected"][i], 1)
        return res
