"""Setting up an embed run: backbones from names, checked options, the feature groups, the
worker configuration and the store manifest (with its recipe) that the run writes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from faceprobe.data.records import FaceRecord
from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.embed import chips as chip_codec
from faceprobe.embed import features as extra_features
from faceprobe.embed.backbones import Backbone, create_backbone
from faceprobe.embed.detect import MULTI_FACE_POLICIES, NO_FACE_POLICIES
from faceprobe.embed.images import DEFAULT_MAX_PIXELS
from faceprobe.embed.prepare import LANDMARK_MODES, PrepareConfig
from faceprobe.embed.recipe import make_recipe, parse_backbones, parse_weights
from faceprobe.errors import ConfigError, StoreError


def make_backbones(backbone, weights=None, device="auto", precision="fp32") -> list[Backbone]:
    """Backbones from a name, ``"a,b"``, a Backbone or a list of either; ``weights`` one per
    backbone (see :func:`faceprobe.embed.recipe.parse_weights`)."""
    if isinstance(backbone, Backbone):
        return [backbone]
    items = parse_backbones(backbone) if isinstance(backbone, str) else list(backbone)
    if not items:
        raise ConfigError("--backbone needs at least one backbone name")
    ws = parse_weights(weights, len(items))
    out = [b if isinstance(b, Backbone) else
           create_backbone(str(b), weights=w, device=device, precision=precision)
           for b, w in zip(items, ws, strict=True)]
    names = [b.name for b in out]
    if len(set(names)) != len(names) or "embedding" in names[1:]:
        raise ConfigError(f"backbones {', '.join(names)}: each backbone once")
    return out


def split_chips(features: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """``features`` without the ``chips`` group, and whether it was asked for (chips are kept
    beside the groups, not as one: see faceprobe.embed.chips)."""
    return tuple(g for g in features if g != chip_codec.GROUP), chip_codec.GROUP in features


def check_options(multi_face, no_face, landmarks, features, backbones: Sequence[Backbone]):
    """The store's groups: the first backbone's (``embedding`` first), the extra groups asked
    for, and one group per further backbone, named after it."""
    if multi_face not in MULTI_FACE_POLICIES:
        raise ConfigError(f"multi_face={multi_face!r}; choose one of {', '.join(MULTI_FACE_POLICIES)}")
    if no_face not in NO_FACE_POLICIES:
        raise ConfigError(f"no_face={no_face!r}; choose one of {', '.join(NO_FACE_POLICIES)}")
    if landmarks not in LANDMARK_MODES:
        raise ConfigError(f"landmarks={landmarks!r}; choose one of {', '.join(LANDMARK_MODES)}")
    first, *rest = backbones
    others = [bb.name for bb in rest]
    groups = tuple(dict.fromkeys(["embedding", *[g for g in features if g not in others],
                                  *others]))
    own, extra = extra_features.split_groups([g for g in groups if g not in others],
                                             tuple(first.config.feature_dims))
    first.check_groups(own)
    extra_features.check_available([*extra, *(["geometry68"] if landmarks == "dlib68" else [])])
    return groups


def group_dims(backbones: Sequence[Backbone], groups) -> dict[str, int]:
    dims = {bb.name: bb.config.embedding_dim for bb in backbones[1:]}
    dims.update(extra_features.EXTRA_DIMS)
    dims.update(backbones[0].config.feature_dims)
    return {g: int(dims[g]) for g in groups}


def extra_groups(groups) -> tuple[str, ...]:
    return tuple(g for g in groups if g in extra_features.EXTRA_DIMS)


def prepare_config(backbones: Sequence[Backbone], groups, *, multi_face="central",
                   no_face="skip", min_face_size=None, landmarks="detect",
                   max_pixels=DEFAULT_MAX_PIXELS, detector_device="cpu", detector="mtcnn",
                   detector_weights=None) -> PrepareConfig:
    return PrepareConfig(backbones[0].config, multi_face, no_face, min_face_size, landmarks,
                         max_pixels, detector_device, extra_groups(groups),
                         tuple(bb.config for bb in backbones[1:]), detector=detector,
                         detector_weights=detector_weights)


def in_workers(backbones: Sequence[Backbone], groups) -> tuple:
    """Backbones with ``runs_in_workers`` (dlib: single-threaded, so one copy per worker process
    uses every core where one in the main process uses one) and a weights file to load there."""
    out = []
    for k, bb in enumerate(backbones):
        if bb.runs_in_workers and bb.weights_path:
            own = tuple(g for g in groups if g in bb.config.feature_dims) if k == 0 \
                else ("embedding",)
            out.append((k, bb.name, bb.weights_path, bb.precision, own))
    return tuple(out)


def build_meta(records: Sequence[FaceRecord], backbones: Sequence[Backbone], cfg: PrepareConfig,
               groups, shard_size: int, vocabularies: dict | None, dataset: str | None,
               root: str | None) -> dict:
    """The store manifest of an embed run (both engines write this, so either can resume a
    store the other started)."""
    from faceprobe.embed.store import build_vocabularies, records_fingerprint

    if vocabularies is None:
        tasks = {t for r in records for t in r.labels}
        vocabularies = {t: v for t, v in DEFAULT_VOCABULARIES.items() if t in tasks}
    bb = backbones[0]
    meta = {
        "backbone": bb.name, "weights_sha256": bb.weights_sha256, "alignment": cfg.describe(),
        "precision": bb.precision, "dtype": "float32",
        "features": group_dims(backbones, groups),
        "vocabularies": build_vocabularies(records, vocabularies), "shard_size": int(shard_size),
        "dataset": dataset or (records[0].dataset if records else None), "root": root,
        "records_sha256": records_fingerprint(r.path for r in records),
        "num_records": len(records), "num_shards": math.ceil(len(records) / shard_size),
        "backbone_config": bb.config.as_dict(),
        "recipe": make_recipe(backbones, multi_face=cfg.multi_face, no_face=cfg.no_face,
                              min_face_size=cfg.min_face_size, landmarks=cfg.landmarks,
                              max_pixels=cfg.max_pixels, extra_features=cfg.extra_features,
                              detector=cfg.detector, detector_weights=cfg.detector_weights),
    }
    if cfg.extra_features:  # only then, so an embedding-only manifest stays as it was
        meta["feature_provenance"] = extra_features.provenance(cfg.extra_features)
    return meta


def check_labels(records: Sequence[FaceRecord], vocab: dict) -> None:
    """Refuse a label outside the store's vocabulary (or a non-numeric regression value) before
    any image is embedded: the store would refuse it anyway, but only when its shard is written,
    maybe hours into the run."""
    allowed = {t: frozenset(v) for t, v in vocab.items() if v is not None}
    for rec in records:
        for task, value in rec.labels.items():
            if task in allowed:
                if str(value) not in allowed[task]:
                    raise StoreError(f"label {task}={str(value)[:40]!r} of {rec.path} is not in "
                                     f"the vocabulary {vocab[task][:12]}; fix the label file or "
                                     "the reader's vocabulary")
            elif task in vocab:
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise StoreError(f"label {task}={str(value)[:40]!r} of {rec.path} is not a "
                                     "number; fix the label file") from None
