"""dlib's ResNet face descriptor (128-d), offline via the face_recognition_models package.

Decisions:
- Chips are cut the way dlib's own pipeline cuts them (alignment ``dlib5``: dlib's 5-point
  predictor on the MTCNN box, ``get_face_chip`` 150x150, padding 0.25), so MTCNN serves every
  backbone while dlib sees the chips it was trained on (see faceprobe.embed.align for the
  measurement against warping MTCNN's points onto a template).
- A batch of chips goes to ``compute_face_descriptor`` in one call. The descriptors are
  L2-normalised (dlib's own are not; its 0.6 euclidean threshold then has no meaning, use cosine).
- dlib's descriptor is single-threaded, so ``runs_in_workers``: the embed pass's worker processes
  each load it and embed their own chips (both cores busy instead of one).
- dlib runs in fp32 only; the model file is found without importing face_recognition_models
  (its ``__init__`` imports pkg_resources, which current setuptools no longer ships).
"""

from __future__ import annotations

import numpy as np

from faceprobe.embed.align import DLIB_150_TEMPLATE, dlib_models_dirs
from faceprobe.embed.backbones.base import (
    Backbone,
    BackboneConfig,
    check_precision,
    l2_normalise,
    resolve_device,
    resolve_weights,
)
from faceprobe.errors import ConfigError, WeightsError
from faceprobe.files import file_sha256

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_URL = "http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2"


DLIB_CONFIG = BackboneConfig(
    name="dlib.resnet", input_size=150, mean=0.0, std=1.0, embedding_dim=128,
    alignment="dlib5", template=tuple(map(tuple, DLIB_150_TEMPLATE.tolist())), margin=0.0,
    feature_dims={"embedding": 128},
)


class DlibResNet(Backbone):
    # dlib's descriptor runs on one core: the embed pass gives each worker process its own copy
    runs_in_workers = True

    def __init__(self, weights=None, device="auto", precision: str = "fp32"):
        try:
            import dlib
        except ImportError:
            raise ConfigError("backbone dlib.resnet needs dlib: pip install 'faceprobe[dlib]'") \
                from None
        if weights == "random":
            raise ConfigError("dlib.resnet has no random-weights mode; omit --weights")
        self.config = DLIB_CONFIG
        self.device = resolve_device("cpu" if device in (None, "auto") else device)
        self.precision = check_precision(precision, self.device, ("fp32",), self.config.name)
        # the .dat is bzip2-compressed on dlib.net, so there is no direct download here
        path = resolve_weights(MODEL_FILE, weights, None, extra_dirs=dlib_models_dirs(),
                               what="dlib face recognition model")
        try:
            self.model = dlib.face_recognition_model_v1(str(path))
        except RuntimeError as exc:
            raise WeightsError(f"{path} is not a dlib face recognition model ({exc}); get it "
                               f"with `pip install face-recognition-models` or from {MODEL_URL}") \
                from None
        self.weights_sha256 = file_sha256(path)
        self.weights_path = str(path)

    def _features(self, batch, groups):
        chips = [np.ascontiguousarray(c) for c in batch]
        desc = self.model.compute_face_descriptor(chips)
        return {"embedding": l2_normalise(np.array([np.asarray(d) for d in desc], np.float32))}
