"""Benchmark the embed pass against facenet-pytorch's README loop, and derive/check the dlib chip.

    python bench/embed.py speed [--n 500] [--threads 2]
    python bench/embed.py dlib-template [--n 400]

``speed``: the same LFW images (../shared/data/lfw) and the same threads. The README loop is
``face = mtcnn(img); emb = resnet(face.unsqueeze(0))`` per image; faceprobe is ``embed_dataset``
(worker processes for decode+detect+align, batched backbone). Both use the same seeded random
InceptionResnetV1 weights (the VGGFace2 file cannot be fetched here) and the same MTCNN settings
(margin 14, largest face). Reports images/s of each, the ratio, and the cosine agreement of the
embeddings, raw and centered: random weights map every face to nearly the same direction
(raw cosines ~0.9999 between different people), so agreement is also reported after subtracting
the mean embedding, which is what a real comparison measures. Then bf16 vs fp32 the same way.

``dlib-template``: where MTCNN's 5 points land in dlib's own 150x150 chip
(``get_face_chip(img, shape_predictor_5, 150, 0.25)``), averaged over LFW faces: the
``DLIB_150_TEMPLATE`` in faceprobe/embed/align.py; then the mean cosine between dlib embeddings of
our chips and of dlib's own pipeline.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def lfw_paths(n: int) -> list[str]:
    root = SHARED / "lfw" / "lfw-deepfunneled"
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    if not paths:
        sys.exit(f"no LFW images under {root}")
    return paths[:n]


def _cos(a: np.ndarray, b: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    if center is not None:
        a, b = a - center, b - center
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def readme_loop(paths, state_dict, threads: int):
    import torch
    from facenet_pytorch import MTCNN, InceptionResnetV1
    from speed_loops import facenet_readme_loop  # bench/ is sys.path[0] when run as a script

    torch.set_num_threads(threads)
    mtcnn = MTCNN(image_size=160, margin=14)
    resnet = InceptionResnetV1(pretrained=None).eval()
    resnet.load_state_dict(state_dict)
    embs, _, seconds = facenet_readme_loop(paths, mtcnn, resnet)
    return embs, seconds


def faceprobe_run(paths, precision: str, threads: int, workers: int, batch_size: int,
                  shard_size: int | None = None):
    import torch

    from faceprobe.data.records import FaceRecord
    from faceprobe.embed.backbones import create_backbone
    from faceprobe.embed.pipeline import embed_dataset
    from faceprobe.embed.store import Store

    torch.set_num_threads(threads)
    bb = create_backbone("facenet.vggface2", weights="random", device="cpu", precision=precision)
    recs = [FaceRecord(path=p, dataset="lfw") for p in paths]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        summary = embed_dataset(recs, Path(d) / "s", bb, shard_size=shard_size or len(recs),
                                batch_size=batch_size, workers=workers, show_progress=False,
                                detector="mtcnn")  # the README loop's detector
        seconds = time.perf_counter() - t0
        data = Store(Path(d) / "s").load()
    embs = dict(zip(data.path.tolist(), data.X["embedding"], strict=True))
    return embs, seconds, summary, bb


def cmd_speed(args) -> dict:
    import torch

    paths = lfw_paths(args.n)
    from faceprobe.embed.backbones.facenet import random_state_dict
    sd = random_state_dict()
    sd = {k: v.contiguous() for k, v in sd.items()}
    # faceprobe first: its workers fork a process without the README loop's state
    fp32, t_fp32, summary, _ = faceprobe_run(paths, "fp32", args.threads, args.workers,
                                             args.batch_size)
    bf16, t_bf16, _, _ = faceprobe_run(paths, "bf16", args.threads, args.workers, args.batch_size)
    ref, t_ref = readme_loop(paths, sd, args.threads)
    common = [p for p in paths if p in ref and p in fp32]
    a = np.stack([ref[p] for p in common])
    b = np.stack([fp32[p] for p in common])
    center = a.mean(0)
    both = [p for p in paths if p in fp32 and p in bf16]
    f = np.stack([fp32[p] for p in both])
    h = np.stack([bf16[p] for p in both])
    result = {
        "images": len(paths), "threads": args.threads, "workers": args.workers,
        "cpu": os.cpu_count(), "load_avg": os.getloadavg()[0], "torch": torch.__version__,
        "readme_loop_img_s": round(len(paths) / t_ref, 2),
        "faceprobe_fp32_img_s": round(len(paths) / t_fp32, 2),
        "faceprobe_bf16_img_s": round(len(paths) / t_bf16, 2),
        "speedup_fp32": round(t_ref / t_fp32, 2), "speedup_bf16": round(t_ref / t_bf16, 2),
        "faces_readme": len(ref), "faces_faceprobe": len(fp32), "compared": len(common),
        "cos_vs_readme_raw_mean": float(_cos(a, b).mean()),
        "cos_vs_readme_centered_mean": float(_cos(a, b, center).mean()),
        "cos_vs_readme_centered_p5": float(np.percentile(_cos(a, b, center), 5)),
        "cos_bf16_vs_fp32_raw_min": float(_cos(f, h).min()),
        "cos_bf16_vs_fp32_centered_mean": float(_cos(f, h, f.mean(0)).mean()),
        "cos_bf16_vs_fp32_centered_p5": float(np.percentile(_cos(f, h, f.mean(0)), 5)),
        "status": summary["status"],
    }
    return result


def cmd_dlib_template(args) -> dict:
    import dlib
    import torch

    from faceprobe.embed.align import (
        DLIB_150_TEMPLATE,
        similarity_matrix,
        transform_points,
        warp_affine,
    )
    from faceprobe.embed.detect import FaceDetector
    from faceprobe.embed.images import load_image

    torch.set_num_threads(args.threads)
    models = Path(importlib.util.find_spec("face_recognition_models")
                  .submodule_search_locations[0]) / "models"
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    fr = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    hog = dlib.get_frontal_face_detector()
    # dlib's 5-point chip template (dlib/image_transforms/interpolation.h, get_face_chip_details)
    unit = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                     [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                     [0.4901123135679, 0.6277975316475]])
    pad, size = 0.25, 150
    dlib_tpl = (pad + unit) / (2 * pad + 1) * size
    detector = FaceDetector(multi_face="central")
    all_paths = sorted(str(p) for p in (SHARED / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))
    paths = all_paths[::max(1, len(all_paths) // args.n)][:args.n]
    mapped, ours, theirs = [], [], []
    for p in paths:
        img = load_image(p)
        res = detector.locate([img])[0]
        if not res.faces:
            continue
        face = res.faces[0]
        dets = hog(img, 0)
        if not dets:
            continue
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        best = min(dets, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2)
        shape = sp(img, best)
        parts = np.array([[q.x, q.y] for q in shape.parts()], float)
        mapped.append(transform_points(similarity_matrix(parts, dlib_tpl), face.landmarks))
        theirs.append(np.asarray(fr.compute_face_descriptor(img, shape)))
        ours.append(warp_affine(img, similarity_matrix(face.landmarks, DLIB_150_TEMPLATE), 150))
    ours_e = np.array([np.asarray(d) for d in fr.compute_face_descriptor(ours)])
    cos = _cos(ours_e, np.array(theirs))
    return {
        "faces": len(mapped),
        "derived_template": np.round(np.mean(mapped, 0), 4).tolist(),
        "template_in_use": DLIB_150_TEMPLATE.tolist(),
        "cos_ours_vs_dlib_mean": float(cos.mean()), "cos_ours_vs_dlib_p5":
            float(np.percentile(cos, 5)), "cos_ours_vs_dlib_min": float(cos.min()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed", help="faceprobe vs the facenet-pytorch README loop")
    s.add_argument("--n", type=int, default=500, help="LFW images")
    s.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    s.add_argument("--workers", type=int, default=None,
                   help="faceprobe worker processes (default: --threads)")
    s.add_argument("--batch-size", type=int, default=64)
    d = sub.add_parser("dlib-template", help="derive and check the dlib chip template")
    d.add_argument("--n", type=int, default=400)
    d.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "speed":
        args.workers = args.threads if args.workers is None else args.workers
        out = cmd_speed(args)
    else:
        out = cmd_dlib_template(args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
