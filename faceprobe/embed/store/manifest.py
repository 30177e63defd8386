"""The manifest: what a store was made with, what must match to resume it, and the checks every
read of it passes (a manifest comes from disk, so it is untrusted)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from faceprobe import __version__
from faceprobe.data.vocab import is_regression
from faceprobe.embed.store.layout import FORMAT, FORMAT_VERSION, MANIFEST
from faceprobe.errors import StoreError

_REQUIRED_META = ("backbone", "features", "vocabularies", "shard_size")
# Manifest keys that must match for a run to resume into an existing store.
_RESUME_KEYS = (
    "backbone", "weights_sha256", "alignment", "precision", "features", "dtype", "shard_size",
    "records_sha256", "vocabularies", "chips", "feature_provenance",
)


def records_fingerprint(paths: Iterable[str]) -> str:
    """Hash of the ordered input list: resuming with another input list would misplace shards."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def build_vocabularies(records: Iterable[Any], declared: dict[str, list[str] | None]) -> dict:
    """Vocabularies for every task the records carry: the declared ones, and for a categorical
    task nobody declared (a generic CSV column, a folder class), its sorted distinct values."""
    vocab: dict[str, list[str] | None] = {k: (list(v) if v else None) for k, v in declared.items()}
    seen: dict[str, set] = {}
    for rec in records:
        for task, value in rec.labels.items():
            if task in vocab and (vocab[task] is not None or is_regression(task)):
                continue
            seen.setdefault(task, set()).add(str(value))
    for task, values in seen.items():
        vocab[task] = None if is_regression(task) else sorted(values)
    return vocab


def _recipe_key(meta: dict) -> Any:
    """What of a recipe must match to resume: not where the weights file was, only its hash."""
    r = meta.get("recipe") or {}
    return ([{k: v for k, v in b.items() if k != "weights"} for b in r.get("backbones", [])],
            {k: v for k, v in (r.get("detection") or {}).items() if k != "detector_weights"},
            r.get("extra_features"))


def _read_manifest(path: Path) -> dict:
    try:
        meta = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is not a faceprobe store (no {MANIFEST}); "
                         "create one with `faceprobe embed`") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path / MANIFEST} is damaged ({exc}); re-embed with --overwrite") from None
    if meta.get("format") != FORMAT:
        raise StoreError(f"{path / MANIFEST} is not a faceprobe store manifest")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(
            f"store {path} has format {meta.get('format_version')}, newer than this faceprobe "
            f"({__version__}) reads; upgrade faceprobe"
        )
    _check_manifest(path, meta)
    return meta


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_manifest(path: Path, meta: dict) -> None:
    """A manifest is read from disk, so it is untrusted: anything every reader relies on is
    checked here, where a bad value is one line, not a crash deep in a head."""
    where = path / MANIFEST
    feats = meta.get("features")
    if not isinstance(feats, dict) or not feats or not all(
            isinstance(k, str) and _is_count(v) for k, v in feats.items()):
        raise StoreError(f"{where} has invalid feature dimensions {str(feats)[:80]}; "
                         "re-embed with --overwrite")
    vocab = meta.get("vocabularies")
    if not isinstance(vocab, dict) or not all(
            v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            for v in vocab.values()):
        raise StoreError(f"{where} has invalid label vocabularies; re-embed with --overwrite")
    if not _is_count(meta.get("shard_size")):
        raise StoreError(f"{where} has an invalid shard_size {meta.get('shard_size')!r}; "
                         "re-embed with --overwrite")
    for key in ("num_shards", "num_records"):
        v = meta.get(key)
        if v is not None and not (_is_count(v) or v == 0):
            raise StoreError(f"{where} has an invalid {key} {v!r}; re-embed with --overwrite")
