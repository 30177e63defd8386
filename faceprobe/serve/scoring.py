"""Scoring uploaded photos: decode, detect every face, embed, predict, search the gallery.

Decisions:
- The backbones are rebuilt from the training store's recipe (same weights, preprocessing,
  alignment and detection settings; other weights are refused, their embeddings would be other
  numbers) and the detector is warmed up on a blank image, once, when ``create_app`` builds the Scorer.
- Uploads are scored in one pass: each file is decoded with ``load_image`` (the embed stage's
  hostile-input handling: pixel limit from the header before decoding, one-line errors), then all
  decodable files go through one ``embed_images`` call with ``multi_face='all'``, so every face is
  shown, and one ``predict_outputs`` call. Model calls are serialised by a lock: the detector and
  the backbone are not promised to be thread-safe, and two CPU-bound batches at once are no
  faster than one after the other.
"""

from __future__ import annotations

import base64
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceprobe.embed.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from faceprobe.embed.store import USABLE_STATUSES
from faceprobe.heads.bundle import Bundle
from faceprobe.serve.gallery import Gallery
from faceprobe.serve.predictor import Predictor
from faceprobe.serve.responses import jpeg, num, points

PREVIEW_SIDE = 800


def make_backbones(bundle: Bundle, weights=None) -> list:
    """The bundle's backbones with the weights and preprocessing of its training store's recipe
    (other weights are refused with one line naming both hashes)."""
    from faceprobe.embed.recipe import build_backbones, check_extra_groups

    check_extra_groups(bundle.meta.get("store", {}).get("feature_provenance"),
                       list(bundle.features), f"bundle {bundle.path}")
    return build_backbones(bundle.recipe, weights=weights, what=f"bundle {bundle.path}")


class Scorer:
    """Scores uploaded files: decode, detect every face, embed, predict, search the gallery."""

    def __init__(self, bundle: Bundle, *, gallery: Gallery | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, warm_up: bool = True,
                 weights=None):
        self.bundle = bundle
        self.predictor = Predictor(bundle)
        self.groups = bundle.features
        self.gallery = gallery
        self.max_pixels = max_pixels
        self.backbones = make_backbones(bundle, weights)
        from faceprobe.embed.recipe import detection_options

        # the recipe's detection settings (resolved once: a recorded detector file is hashed),
        # but every face: a photo is shown with all of them
        self.detection = {**detection_options(bundle.recipe), "multi_face": "all",
                          "max_pixels": max_pixels}
        self.lock = threading.Lock()
        if warm_up:
            with tempfile.TemporaryDirectory(prefix="faceprobe-serve-") as tmp:
                blank = Path(tmp) / "blank.png"
                Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)
                self._embed([blank])  # loads MTCNN now rather than on the first request

    def _embed(self, paths: list[Path]) -> list[dict]:
        from faceprobe.embed.pipeline import embed_images

        return embed_images(paths, self.backbones, features=tuple(self.groups), workers=0,
                            **self.detection)

    def score(self, uploads: list, preview: bool = True) -> dict[str, Any]:
        """One result per upload (in order), each with its faces; see the API docs."""
        t0 = time.perf_counter()
        images: list[dict[str, Any]] = []
        by_path: dict[str, dict[str, Any]] = {}
        for up in uploads:
            entry: dict[str, Any] = {"name": up.name, "bytes": up.size, "status": "ok",
                                     "error": "", "width": None, "height": None, "faces": []}
            images.append(entry)
            try:
                img = load_image(up.path, self.max_pixels)
            except ImageLoadError as exc:
                entry["status"] = exc.status
                entry["error"] = str(exc).replace(str(up.path), up.name)
                continue
            entry["height"], entry["width"] = int(img.shape[0]), int(img.shape[1])
            if preview:
                entry["preview"] = ("data:image/jpeg;base64,"
                                    + base64.b64encode(jpeg(img, PREVIEW_SIDE)).decode())
            by_path[str(Path(up.path))] = entry
            entry["_upload"] = up
        faces: list[tuple[dict, dict]] = []
        if by_path:
            with self.lock:
                rows = self._embed([Path(p) for p in by_path])
                usable = [r for r in rows if r["status"] in USABLE_STATUSES]
                out = {}
                if usable:
                    X = {g: np.stack([np.asarray(r["features"][g], np.float32) for r in usable])
                         for g in self.groups}
                    out = self.predictor.predict(X)
                    emb = np.stack([np.asarray(r["features"]["embedding"], np.float32)
                                    for r in usable])
                    found = self.gallery.search(emb) if self.gallery is not None else None
            k = 0
            for r in rows:
                entry = by_path[str(Path(r["path"]))]
                up = entry["_upload"]
                if r["status"] not in USABLE_STATUSES:
                    entry["status"] = r["status"]
                    entry["error"] = str(r.get("error") or r["status"]).replace(str(up.path),
                                                                                 up.name)
                    continue
                face = {"face": int(r.get("face") or 0), "status": r["status"],
                        "box": points(r["box"]), "detector_score": num(r.get("score") or math.nan),
                        "landmarks": points(r["landmarks_detected"]),
                        "predictions": self.predictor.describe(out, k)}
                if self.gallery is not None:
                    face["identities"] = found[k]
                entry["faces"].append(face)
                faces.append((entry, face))
                k += 1
        for entry in images:
            entry.pop("_upload", None)
            if entry["faces"]:
                entry["status"], entry["error"] = "ok", ""
        return {"images": images, "faces": len(faces), "tasks": self.bundle.tasks,
                "gallery": self.gallery is not None,
                "seconds": round(time.perf_counter() - t0, 3)}
