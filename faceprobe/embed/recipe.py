"""The embedding recipe: everything that turns an image file into a store row's features.

A store records its recipe in ``manifest.json`` (``recipe``); a bundle trained on the store copies
it. Scoring image files (``faceprobe score``) and serving photos (``faceprobe serve``) rebuild the
pipeline from the recipe alone, so the same image gives the same embedding either way.

Layout (JSON)::

    {"version": 1,
     "backbones": [{"name": "dlib.resnet", "group": "embedding", "weights_sha256": "...",
                    "weights": "/abs/path/at/embed/time", "precision": "fp32",
                    "config": {<BackboneConfig.as_dict(): input size, channel order,
                               normalisation, layout, alignment, template, margin>}}, ...],
     "detection": {"detector": "mtcnn", "multi_face": "central", "no_face": "skip",
                   "min_face_size": null, "landmarks": "detect", "max_pixels": 40000000},
     "extra_features": ["geometry68", "hog"]}

Decisions:
- The first backbone's embedding is the ``embedding`` group; each further backbone's embedding
  is a group named after the backbone (``arcface.mobilefacenet``), aligned to its own template.
- Weights are found again by hash: ``weights=`` given by the caller, else the file the store was
  embedded from when it is still there with the same sha256, else the backbone's default file.
  Whatever is found must have the recorded sha256; otherwise one line names both hashes.
- A recipe with ``landmarks: dataset`` cannot be reproduced on new images (they have no
  annotated points): images are detected instead, and :func:`detection_options` says so.
- Stores and bundles made before recipes existed get one rebuilt from their manifest
  (``backbone``, ``weights_sha256``, ``backbone_config`` and the ``alignment`` description).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from faceprobe.errors import BundleError, ConfigError, WeightsError

RECIPE_VERSION = 1
PRIMARY_GROUP = "embedding"


def parse_backbones(spec: str | Sequence[str]) -> list[str]:
    """``"dlib.resnet,arcface.mobilefacenet"`` or a list -> names, duplicates refused."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)
             if str(s).strip()]
    if not names:
        raise ConfigError("--backbone needs at least one backbone name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--backbone names {', '.join(dupes)} twice; each backbone once")
    return names


def parse_weights(weights: Any, n: int) -> list[Any]:
    """``--weights`` for ``n`` backbones: one value for a single backbone, or comma-separated
    values by position (an empty item = that backbone's default file)."""
    if weights is None:
        return [None] * n
    if not isinstance(weights, str):
        items = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    elif n == 1:
        items = [weights]
    else:
        items = [w.strip() or None for w in weights.split(",")]
    if len(items) != n:
        raise ConfigError(f"--weights lists {len(items)} file(s) for {n} backbones; give one per "
                          "backbone, comma-separated, in --backbone order (empty = default file)")
    return items


def backbone_entry(backbone: Any, group: str) -> dict:
    """What the recipe records of one backbone that fills ``group``."""
    return {"name": backbone.name, "group": group, "weights_sha256": backbone.weights_sha256,
            "weights": backbone.weights_path, "precision": backbone.precision,
            "config": backbone.config.as_dict()}


def make_recipe(backbones: Sequence[Any], *, multi_face: str, no_face: str,
                min_face_size: float | None, landmarks: str, max_pixels: int | None,
                extra_features: Sequence[str] = (), detector: str = "mtcnn",
                detector_weights: str | None = None) -> dict:
    recipe = {
        "version": RECIPE_VERSION,
        "backbones": [backbone_entry(bb, PRIMARY_GROUP if i == 0 else bb.name)
                      for i, bb in enumerate(backbones)],
        "detection": {"detector": detector, "multi_face": multi_face, "no_face": no_face,
                      "min_face_size": min_face_size, "landmarks": landmarks,
                      "max_pixels": max_pixels},
        "extra_features": list(extra_features),
    }
    if detector_weights:  # SCRFD: the file by hash, as the backbones'
        from faceprobe.files import file_sha256

        recipe["detection"].update(detector_weights_sha256=file_sha256(detector_weights),
                                   detector_weights=str(detector_weights))
    return recipe


_OLD_ALIGNMENT = re.compile(r"landmarks=(\w+) multi_face=(\w+) no_face=(\w+) min_face_size=(\S+)")


def recipe_of(meta: Mapping[str, Any]) -> dict:
    """The recipe of a store manifest (or of a bundle's store provenance)."""
    if isinstance(meta.get("recipe"), Mapping):
        return dict(meta["recipe"])
    from faceprobe.embed.features import EXTRA_DIMS

    m = _OLD_ALIGNMENT.search(str(meta.get("alignment") or ""))
    landmarks, multi_face, no_face, mfs = m.groups() if m else ("detect", "central", "skip",
                                                                "auto")
    return {
        "version": 0,
        "backbones": [{
            "name": meta.get("backbone"), "group": PRIMARY_GROUP,
            "weights_sha256": meta.get("weights_sha256"), "weights": None,
            "precision": meta.get("precision") or "fp32",
            "config": meta.get("backbone_config"),
        }],
        "detection": {"detector": "mtcnn", "multi_face": multi_face, "no_face": no_face,
                      "min_face_size": None if mfs == "auto" else float(mfs),
                      "landmarks": landmarks, "max_pixels": None},
        "extra_features": [g for g in (meta.get("features") or {}) if g in EXTRA_DIMS],
    }


def detection_options(recipe: Mapping[str, Any]) -> dict:
    """Keyword options of ``embed_images`` that reproduce the recipe's detection."""
    d = recipe.get("detection") or {}
    opts = {"multi_face": d.get("multi_face", "central"), "no_face": d.get("no_face", "skip"),
            "min_face_size": d.get("min_face_size")}
    # always named: embed_images' default (auto) must never stand in for the recorded detector
    opts["detector"] = d.get("detector", "mtcnn")
    if opts["detector"] != "mtcnn":
        opts["detector_weights"] = recorded_detector_file(d)
    if d.get("max_pixels"):
        opts["max_pixels"] = int(d["max_pixels"])
    if d.get("landmarks") == "dlib68":  # a landmark model, not the dataset's points: replayable
        opts["landmarks"] = "dlib68"
    return opts


def check_extra_groups(recorded: Mapping[str, Any] | None, groups: Sequence[str], what: str
                       ) -> None:
    """Refuse to recompute an extra group (geometry68, hog, ...) that this faceprobe computes
    differently from what ``recorded`` (a store's ``feature_provenance``) says: a head trained
    on the old values would get new ones silently. Unrecorded groups (older bundles) pass."""
    from faceprobe.embed.features import EXTRA_DIMS, provenance

    for g in (g for g in groups if g in EXTRA_DIMS and g in (recorded or {})):
        now = provenance([g])[g]
        if recorded[g] != now:
            keys = sorted(k for k in set(now) | set(recorded[g]) if now.get(k) != recorded[g].get(k))
            raise BundleError(f"{what} was trained on {g} computed otherwise than this faceprobe "
                              f"computes it ({', '.join(keys)} differ); re-embed the store (or "
                              f"--add-features {g} into a fresh copy) and retrain")


def recorded_detector_file(d: Mapping[str, Any]) -> str | None:
    """The recorded detector file when it is still there with its hash, else None (the default
    file is resolved; a different one is refused naming both hashes)."""
    from faceprobe.files import file_sha256

    path, want = d.get("detector_weights"), d.get("detector_weights_sha256")
    if path and Path(path).is_file() and file_sha256(path) == want:
        return str(path)
    if want:
        from faceprobe.embed.detect_scrfd import ScrfdDetector

        found = ScrfdDetector._resolve(None)
        if file_sha256(found) != want:
            raise WeightsError(f"the recipe's {d['detector']} file has sha256 {want}, but "
                               f"{found} has {file_sha256(found)}; put the recorded file "
                               f"({path}) back")
        return str(found)
    return None


def _explicit(weights: Any, specs: Sequence[Mapping]) -> list[Any]:
    if isinstance(weights, Mapping):
        unknown = set(weights) - {s["name"] for s in specs}
        if unknown:
            raise ConfigError(f"weights given for {', '.join(sorted(unknown))}, which the recipe "
                              f"does not use ({', '.join(s['name'] for s in specs)})")
        return [weights.get(s["name"]) for s in specs]
    return parse_weights(weights, len(specs))


def build_backbones(recipe: Mapping[str, Any], *, weights: Any = None, device: str = "auto",
                    what: str = "bundle") -> list[Any]:
    """The recipe's backbones with the recorded weights and preprocessing; other weights are
    refused with one line naming both hashes."""
    from faceprobe.embed.backbones import BackboneConfig, create_backbone
    from faceprobe.files import file_sha256

    specs = recipe["backbones"]
    if not specs or not specs[0].get("name"):
        raise BundleError(f"{what} records no backbone, so images cannot be embedded for it; "
                          "score a store instead")
    out = []
    for spec, given in zip(specs, _explicit(weights, specs), strict=True):
        want = str(spec.get("weights_sha256") or "")
        w = given
        if w is None and want.startswith("random"):
            w = "random"
        elif w is None and spec.get("weights") and Path(spec["weights"]).is_file() \
                and file_sha256(spec["weights"]) == want:
            w = spec["weights"]
        bb = create_backbone(spec["name"], weights=w, device=device,
                             precision=spec.get("precision") or "fp32")
        if want and bb.weights_sha256 != want:
            raise BundleError(
                f"{what} was made with {spec['name']} weights sha256 {want} but "
                f"{bb.weights_path or 'the weights found'} has sha256 {bb.weights_sha256}; pass "
                "the original file with --weights or retrain on a store embedded with these")
        if spec.get("config"):
            bb.config = BackboneConfig.from_dict(spec["config"])
        out.append(bb)
    return out
