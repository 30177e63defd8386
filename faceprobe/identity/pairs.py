"""Seeded verification pairs from a store's identity labels, optionally attribute-conditioned.

Decisions:
- Only rows with a usable embedding and an identity are used, so every generated pair can be
  scored by ``verify`` (a pair naming a failed image would only be skipped there).
- Half the pairs are same-person, half different-person (``n // 2`` each), so folds and ROC are
  balanced as in LFW. Pairs are distinct as unordered pairs and never pair an image with itself.
  When fewer distinct pairs exist than asked for, fewer are returned (both classes cut to the
  same count) and the caller reports it; it is not an error on a small dataset.
- Sampling: an anchor image is drawn uniformly from the anchor pool, then its partner uniformly
  from the anchor identity's other images (same) or from every image of another identity
  (different). Without an attribute the pool is every eligible image; with one it is the images
  having it, so "one side has the attribute" holds for every pair while the partner is
  unconstrained; comparing with unrestricted pairs from the same store isolates the attribute.
- An attribute is a store label task (``Eyeglasses``, ``Wearing_Hat``, ``Blurry``,
  ``Heavy_Makeup``...), matched exactly, else case-insensitively; "has it" means its value is
  ``yes`` unless ``NAME=VALUE`` names another class.
- Everything is driven by one ``numpy.random.default_rng(seed)`` over rows in store order, so the
  same store, arguments and seed give the same pairs.
- The CSV (``fold,path_a,path_b,same``, the format ``faceprobe.data.lfw.read_pairs`` reads) gets
  folds round-robin within each class, so every fold has the same mix. Paths are written relative
  to the store's dataset root when they all lie under it (the file survives moving the dataset:
  ``verify --root``), absolute otherwise.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, StoreError

DEFAULT_N = 6000
DEFAULT_FOLDS = 10
_ATTEMPTS_PER_PAIR = 50


def resolve_attribute(store: Store, attribute: str) -> tuple[str, str, int]:
    """``NAME`` or ``NAME=VALUE`` -> (task, value, code in the task's vocabulary)."""
    name, _, value = attribute.partition("=")
    name, value = name.strip(), (value.strip() or "yes")
    vocab = store.vocabularies
    task = name if name in vocab else next(
        (t for t in vocab if t.lower() == name.lower()), None)
    if task is None:
        raise ConfigError(f"store {store.path} has no attribute {name!r}; it has: "
                          f"{', '.join(vocab) or 'no labels'}")
    classes = vocab[task]
    if classes is None:
        raise ConfigError(f"attribute {task!r} is numeric; pairs need a yes/no attribute")
    if value not in classes:
        raise ConfigError(f"attribute {task!r} has no value {value!r}; its values: "
                          f"{', '.join(classes)}")
    return task, value, classes.index(value)


def generate_pairs(store: Store | str | os.PathLike, n: int = DEFAULT_N, seed: int = 0,
                   attribute: str | None = None, split: str | None = None
                   ) -> list[tuple[str, str, bool]]:
    """``n`` pairs ``(path_a, path_b, same)``, same-person first, from identity labels.

    ``attribute``: restrict to pairs whose first image has it (``Eyeglasses`` or ``NAME=VALUE``).
    ``split``: use only that split's images.
    """
    store = store if isinstance(store, Store) else Store(store)
    if n < 2:
        raise ConfigError(f"n must be at least 2 (one same and one different pair), got {n}")
    task = code = None
    if attribute:
        task, _, code = resolve_attribute(store, attribute)
    paths, idents, has_attr = [], [], []
    for d in store.iter_batches(features=(), tasks=[task] if task else (),
                                splits=[split] if split else None):
        keep = d.identity != ""
        paths.append(d.path[keep])
        idents.append(d.identity[keep])
        if task:
            has_attr.append(d.y[task][keep] == code)
    path = np.concatenate(paths) if paths else np.zeros(0, object)
    if not len(path):
        raise StoreError(f"store {store.path} has no usable images with an identity"
                         + (f" in split {split!r}" if split else "")
                         + "; pairs need identity labels (e.g. CelebA)")
    ident_codes = np.unique(np.concatenate(idents), return_inverse=True)[1]
    order = np.argsort(ident_codes, kind="stable")
    bounds = np.searchsorted(ident_codes[order], np.arange(ident_codes.max() + 2))
    members = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    size = np.array([len(m) for m in members])[ident_codes]

    pool = np.flatnonzero(np.concatenate(has_attr)) if task else np.arange(len(path))
    if not len(pool):
        raise ConfigError(f"no usable image has {attribute}" + (f" in split {split!r}"
                                                                if split else ""))
    if len(members) < 2:
        raise StoreError(f"store {store.path} has a single identity; different-person pairs "
                         "need at least two")
    rng = np.random.default_rng(seed)
    want = n // 2
    pos_pool = pool[size[pool] >= 2]
    positives = _sample(rng, want, pos_pool, lambda a: members[ident_codes[a]], ident_codes,
                        same=True) if len(pos_pool) else []
    negatives = _sample(rng, want, pool, lambda a: None, ident_codes, same=False)
    k = min(len(positives), len(negatives))
    out = [(str(path[a]), str(path[b]), True) for a, b in positives[:k]]
    out += [(str(path[a]), str(path[b]), False) for a, b in negatives[:k]]
    return out


def _sample(rng: np.random.Generator, want: int, pool: np.ndarray, partners, ident: np.ndarray,
            *, same: bool) -> list[tuple[int, int]]:
    """Distinct unordered pairs (anchor from ``pool``); stops early when pairs run out."""
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    n_all = len(ident)
    misses = 0
    # Rejection sampling; a run of misses means the distinct pairs are (nearly) exhausted.
    while len(out) < want and misses < _ATTEMPTS_PER_PAIR * max(want, 1):
        a = int(pool[rng.integers(len(pool))])
        if same:
            cand = partners(a)
            b = int(cand[rng.integers(len(cand))])
            ok = b != a
        else:
            b = int(rng.integers(n_all))
            ok = ident[b] != ident[a]
        key = (min(a, b), max(a, b))
        if not ok or key in seen:
            misses += 1
            continue
        seen.add(key)
        out.append((a, b))
    return out


def write_pairs(pairs: list[tuple[str, str, bool]], out: str | os.PathLike, *,
                folds: int = DEFAULT_FOLDS, root: str | os.PathLike | None = None) -> dict:
    """Write ``fold,path_a,path_b,same`` CSV; folds 1..``folds`` round-robin within each class.

    Paths are made relative to ``root`` when every one lies under it."""
    if folds < 2:
        raise ConfigError(f"folds must be at least 2 for cross-validated verification, got {folds}")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as pairs.csv")
    rel_root = None
    if root:
        r = os.path.abspath(os.fspath(root))
        if all(os.path.abspath(p).startswith(r + os.sep) for a, b, _ in pairs for p in (a, b)):
            rel_root = r
    count = {True: 0, False: 0}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["fold", "path_a", "path_b", "same"])
            for a, b, same in pairs:
                fold = count[same] % folds + 1
                count[same] += 1
                if rel_root:
                    a, b = os.path.relpath(a, rel_root), os.path.relpath(b, rel_root)
                w.writerow([fold, a, b, int(same)])
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"cannot write pairs file {out} ({exc.strerror or exc})") from None
    return {"path": str(out), "pairs": len(pairs), "same": count[True],
            "different": count[False], "folds": folds, "relative_to": rel_root}
