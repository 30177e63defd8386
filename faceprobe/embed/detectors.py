"""The detector registry: which face detector a run uses, its weights file, and one built
detector per process.

Decisions:
- ``auto`` (the default) is SCRFD when its file (``scrfd_2.5g_bnkps.onnx``, or
  ``--detector-weights``) is on this machine, else MTCNN with a one-line warning saying where
  the file goes. Measured (README, "Detectors" and "Does the detector's alignment help"): SCRFD
  found a face in all 3,334 MTFL images, its points fed alignment better on LFW (dlib 0.9842 vs
  0.9796, MobileFaceNet 0.9946 vs 0.9929) and on UTKFace (both backbones: gender 0.903 vs 0.889,
  race balanced 0.827 vs 0.798, age MAE 5.00 vs 5.28), and on AFLW faces its keypoints had NME
  0.079 against MTCNN's 0.128. MTCNN stays the fallback because its weights ship inside
  facenet-pytorch, so a fresh offline machine (the demo, a clean test run) still embeds; ``auto``
  never downloads, ``--detector scrfd`` does when the file is missing and the machine is online.
- Whatever ``auto`` picks is recorded in the store's recipe (name and the file's hash), so
  ``score`` and ``serve`` replay the store's detector, never ``auto``; resuming a store with
  ``auto`` keeps the detector the store was made with.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from faceprobe.embed.detect import FaceDetector
from faceprobe.errors import ConfigError

DETECTORS = ("auto", "mtcnn", "scrfd")
_BUILT: dict[tuple, FaceDetector] = {}


def get_detector(detector: str, weights: str | None, device: str, min_face_size: float | None,
                 multi_face: str, no_face: str) -> FaceDetector:
    """The built detector for these settings, one per process (workers build their own after
    the fork)."""
    key = (detector, weights, device, min_face_size, multi_face, no_face)
    if key not in _BUILT:
        if detector == "scrfd":
            from faceprobe.embed.detect_scrfd import ScrfdDetector

            # one onnxruntime thread on a CPU wherever it runs (a worker, or the main process
            # scoring images), as MTCNN: the same image then gives the same points everywhere
            _BUILT[key] = ScrfdDetector(weights, device, min_face_size, multi_face=multi_face,
                                        no_face=no_face, threads=1 if device == "cpu" else None)
        else:
            _BUILT[key] = FaceDetector(device, min_face_size, multi_face=multi_face,
                                       no_face=no_face)
    return _BUILT[key]


def resolve_detector(detector: str, weights=None) -> str | None:
    """The weights file of a named detector (None for MTCNN, whose weights ship inside
    facenet-pytorch; the recipe hashes it); unknown names and missing files fail here, before
    any image."""
    if detector not in DETECTORS or detector == "auto":
        named = [d for d in DETECTORS if d != "auto"]
        raise ConfigError(f"unknown detector {detector!r}; choose one of {', '.join(named)}")
    if detector == "mtcnn":
        if weights:
            raise ConfigError("--detector-weights is for --detector scrfd; MTCNN's weights ship "
                              "with facenet-pytorch")
        return None
    from faceprobe.embed.detect_scrfd import ScrfdDetector

    return str(ScrfdDetector._resolve(weights))


def recorded_detection(store_dir: str | os.PathLike | None) -> dict | None:
    """The recipe's detection settings of the store at ``store_dir`` (None when there is no
    readable manifest)."""
    if store_dir is None:
        return None
    from faceprobe.embed.recipe import recipe_of
    from faceprobe.embed.store import Store
    from faceprobe.errors import StoreError

    try:
        detection = dict(recipe_of(Store(store_dir).meta).get("detection") or {})
    except StoreError:  # no store there (yet), or none this faceprobe reads: nothing recorded
        return None
    return detection if detection.get("detector", "mtcnn") in DETECTORS else None


def recorded_detector(store_dir: str | os.PathLike | None) -> str | None:
    """The detector of the store at ``store_dir`` (None when there is no readable manifest)."""
    d = recorded_detection(store_dir)
    return None if d is None else d.get("detector", "mtcnn")


def local_scrfd() -> Path | None:
    """SCRFD's file where weights are looked up without downloading, else None."""
    from faceprobe.embed.backbones.base import resolve_weights, torch_checkpoint_dirs
    from faceprobe.embed.detect_scrfd import SCRFD_FILENAME
    from faceprobe.errors import WeightsError

    try:  # no URL: the lookup alone
        return resolve_weights(SCRFD_FILENAME, None, None, extra_dirs=torch_checkpoint_dirs())
    except WeightsError:
        return None


def choose_detector(detector: str, weights=None, resume_from=None) -> tuple[str, str | None]:
    """(detector name, its resolved weights file) for a run; ``auto`` as the module docstring
    says (``resume_from``: the store directory a run may resume, whose recorded file is reused
    when it is still there with its hash)."""
    if detector == "auto":
        recorded = recorded_detection(resume_from)
        if recorded is not None:
            detector = recorded.get("detector", "mtcnn")
            if detector == "scrfd" and not weights:
                from faceprobe.embed.recipe import recorded_detector_file

                weights = recorded_detector_file(recorded)
        elif weights:
            detector = "scrfd"
        elif (found := local_scrfd()) is not None:
            detector, weights = "scrfd", str(found)  # found in torch's cache too
        else:
            detector = _fallback()
    return detector, resolve_detector(detector, weights)


def _fallback() -> str:
    from faceprobe.embed.backbones.base import weights_dir
    from faceprobe.embed.detect_scrfd import SCRFD_FILENAME, SCRFD_URL

    warnings.warn(f"--detector auto: {SCRFD_FILENAME} is not in {weights_dir()}, so faces are "
                  f"detected with MTCNN; for SCRFD (better points and alignment, README) save "
                  f"{SCRFD_URL} there or pass --detector scrfd to download it; --detector mtcnn "
                  "silences this", stacklevel=3)
    return "mtcnn"
