"""Synthetic stores whose embeddings carry real, learnable signal (for tests and bench/heads.py).

Each identity has fixed labels (gender, a skewed race, an age) and its own offset; an embedding is
class-dependent means + an age direction + the identity offset + noise, so a head can learn every
task, a minority race is genuinely harder, and an identity-leaking split would look too good.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.embed.store import StoreWriter

RACE_P = (0.45, 0.2, 0.15, 0.12, 0.08)


def synthetic_arrays(n: int, dim: int = 32, *, seed: int = 0, identities: int | None = None,
                     noise: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    n_id = identities or max(1, n // 4)
    centres = np.random.default_rng(1234 + dim)  # same class geometry for every seed
    # scaled so the class-mean distances (not the per-coordinate values) are fixed: gender ~2.6
    # noise units apart, races ~2.8 (a minority race is still confused more often) at any dim
    g_mean = centres.standard_normal((2, dim)) * (1.85 / np.sqrt(dim))
    r_mean = centres.standard_normal((5, dim)) * (2.0 / np.sqrt(dim))
    age_dir = centres.standard_normal(dim) * (3.0 / np.sqrt(dim))
    id_gender = rng.integers(0, 2, n_id)
    id_race = rng.choice(5, n_id, p=RACE_P)
    id_age = rng.uniform(1, 80, n_id)
    id_off = rng.standard_normal((n_id, dim)) * 0.5
    ident = rng.integers(0, n_id, n)
    age = np.clip(id_age[ident] + rng.normal(0, 2, n), 0, 100)
    x = (g_mean[id_gender[ident]] + r_mean[id_race[ident]] + np.outer((age - 40) / 20, age_dir)
         + id_off[ident] + rng.standard_normal((n, dim)) * noise)
    return {"X": x.astype(np.float32), "gender": id_gender[ident], "race": id_race[ident],
            "age": age.astype(np.float32), "identity": ident}


def write_synthetic_store(path: str | Path, n: int, dim: int = 32, *, seed: int = 0,
                          shard_size: int = 4096, failed_every: int = 0, split: str | None = None,
                          with_identity: bool = True, missing_every: int = 0,
                          backbone: str = "test.synthetic", identities: int | None = None,
                          noise: float = 1.0,
                          path_template: str = "/synthetic/{ident}/{i}.jpg") -> Path:
    """Write a store of ``n`` rows; every ``failed_every``-th row is a failed ``no_face`` row and
    every ``missing_every``-th row lacks its race label. ``split`` 'official' writes train/val/test
    by identity; None leaves the split empty. ``path_template`` formats each row's path from
    ``ident`` and ``i`` (tests use it for paths that need CSV quoting)."""
    a = synthetic_arrays(n, dim, seed=seed, identities=identities, noise=noise)
    vocab = {t: DEFAULT_VOCABULARIES[t] for t in ("gender", "race", "age")}
    meta = {"backbone": backbone, "features": {"embedding": dim}, "vocabularies": vocab,
            "shard_size": shard_size, "weights_sha256": "synthetic", "alignment": "none",
            "precision": "fp32", "records_sha256": f"synthetic-{n}-{seed}",
            "num_shards": (n + shard_size - 1) // shard_size, "dataset": "synthetic"}
    official = np.array(["train", "val", "test"])[
        np.random.default_rng(seed + 1).choice(3, a["identity"].max() + 1, p=(0.7, 0.15, 0.15))]
    path = Path(path)
    with StoreWriter.open(path, meta, overwrite=True) as w:
        for s in range(meta["num_shards"]):
            rows = []
            for i in range(s * shard_size, min(n, (s + 1) * shard_size)):
                failed = failed_every and i % failed_every == failed_every - 1
                labels = {"gender": vocab["gender"][a["gender"][i]],
                          "race": vocab["race"][a["race"][i]], "age": float(a["age"][i])}
                if missing_every and i % missing_every == 0:
                    del labels["race"]
                ident = int(a["identity"][i])
                rows.append({
                    "path": path_template.format(ident=ident, i=i), "dataset": "synthetic",
                    "split": official[ident] if split == "official" else None,
                    "identity": f"p{ident}" if with_identity else None,
                    "status": "no_face" if failed else "ok",
                    "error": "no face found" if failed else "", "labels": labels,
                    "features": None if failed else {"embedding": a["X"][i]},
                })
            w.write_shard(s, rows)
    return path
