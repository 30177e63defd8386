"""The loops a user would write instead of `faceprobe embed`, timed by bench/embed_speed.py.

Each ``NAME_loop(paths, weights, ort_spinning)`` embeds the images one at a time the way the
library's own README/examples do and returns ({path: embedding}, faces found, loop seconds).
They run in a child process (``python bench/embed_speed.py _baseline NAME``), so like that file
this one imports nothing heavy at module level: each loop pays only for what it uses.
"""

from __future__ import annotations

import time
from pathlib import Path

FACENET_SEED = 0  # faceprobe.embed.backbones.facenet.RANDOM_SEED
# insightface's ArcFace 112x112 template (insightface.utils.face_align.arcface_dst)
ARCFACE_DST = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
               [41.5493, 92.3655], [70.7299, 92.2041]]


def arcface_loop(paths: list[str], weights: str, ort_spinning: bool = True):
    import numpy as np
    import onnxruntime as ort
    from facenet_pytorch import MTCNN
    from PIL import Image
    from skimage.transform import SimilarityTransform, warp

    mtcnn = MTCNN(keep_all=False)
    opts = ort.SessionOptions()  # defaults, as insightface creates its sessions
    if not ort_spinning:  # idle ORT threads otherwise busy-wait next to MTCNN's torch threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(weights, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    dst = np.array(ARCFACE_DST)
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    embs, faces = {}, 0
    t0 = time.perf_counter()
    for p in paths:
        img = Image.open(p).convert("RGB")
        boxes, _, points = mtcnn.detect(img, landmarks=True)
        if boxes is None:
            continue
        # facenet-pytorch 2.6 returns object arrays under numpy 2: a user needs the cast too
        tform = SimilarityTransform.from_estimate(np.asarray(points[0], np.float64), dst)
        if not tform:
            continue
        chip = warp(np.asarray(img), tform.inverse, output_shape=(112, 112), order=1,
                    preserve_range=True)
        x = ((chip / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        emb = sess.run(None, {name: x})[0][0]
        embs[p] = emb / np.linalg.norm(emb)
        faces += 1
    return embs, faces, time.perf_counter() - t0


def dlib_loop(paths: list[str], weights: str, ort_spinning: bool = True):
    import importlib.util

    import dlib
    import numpy as np
    from PIL import Image

    spec = importlib.util.find_spec("face_recognition_models")
    models = Path(spec.submodule_search_locations[0]) / "models"
    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    fr = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    embs, faces = {}, 0
    t0 = time.perf_counter()
    for p in paths:
        img = np.array(Image.open(p).convert("RGB"))  # face_recognition.load_image_file
        found = []
        for det in detector(img, 1):
            shape = sp(img, det)
            found.append((det, np.array(fr.compute_face_descriptor(img, shape))))
        faces += len(found)
        if found:  # for the agreement check only: the face nearest the image centre
            cx, cy = img.shape[1] / 2, img.shape[0] / 2
            embs[p] = min(found, key=lambda f: (f[0].center().x - cx) ** 2
                          + (f[0].center().y - cy) ** 2)[1]
    return embs, faces, time.perf_counter() - t0


def facenet_loop(paths: list[str], weights: str, ort_spinning: bool = True):
    import torch
    from facenet_pytorch import MTCNN, InceptionResnetV1

    mtcnn = MTCNN(image_size=160, margin=14)  # faceprobe's facenet crop settings
    torch.manual_seed(FACENET_SEED)  # faceprobe's seeded random weights
    resnet = InceptionResnetV1(pretrained=None, classify=False).eval()
    return facenet_readme_loop(paths, mtcnn, resnet)


def facenet_readme_loop(paths: list[str], mtcnn, resnet):
    """facenet-pytorch's README loop with built models, one image per call: ``face =
    mtcnn(img); emb = resnet(face.unsqueeze(0))``. Also bench/embed.py's baseline."""
    import torch
    from PIL import Image

    embs, faces = {}, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            img = Image.open(p).convert("RGB")
            face = mtcnn(img)
            if face is not None:
                embs[p] = resnet(face.unsqueeze(0))[0].numpy()
                faces += 1
    return embs, faces, time.perf_counter() - t0


BASELINES = {"arcface": arcface_loop, "dlib": dlib_loop, "facenet": facenet_loop}
