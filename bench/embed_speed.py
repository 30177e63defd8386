"""Whole-process embedding speed: `faceprobe embed` against the loop a user would write instead.

    python bench/embed_speed.py [--n 300] [--only arcface,dlib,facenet] [--stages]
                                [--repeat 1] [--json OUT]

Every contender runs on the same first N (sorted) LFW images as its own process, timed in this
process from spawn to exit, so interpreter start-up, imports and model loading count, as a user
experiences them. Pairs (faceprobe vs baseline, run back to back):
- ``arcface``: ``faceprobe embed folder ... --backbone arcface.mobilefacenet`` vs an
  insightface-style loop: PIL open, facenet-pytorch ``MTCNN(keep_all=False).detect(img,
  landmarks=True)``, skimage ``SimilarityTransform`` of the 5 points onto the ArcFace 112 template
  and ``warp``, x/255 then ImageNet mean/std, one ``onnxruntime`` ``session.run`` per image.
  Target: ratio >= 3. onnxruntime's default session lets idle intra-op threads spin, and in a
  per-image loop they compete with MTCNN's torch threads (seen on a loaded 2-core machine: MTCNN
  ~2.4 s/img beside a default session, 0.4-0.7 s/img with spinning off). The default is what a
  user gets; ``--baseline-ort-spinning off`` gives the stricter comparison.
- ``dlib``: ``--backbone dlib.resnet`` vs a face_recognition-style loop: HOG detector (upsample
  1), ``shape_predictor_5_face_landmarks``, ``compute_face_descriptor(img, shape)`` per face.
  Target: ratio >= 1.6.
- ``facenet``: ``--backbone facenet.vggface2 --weights random --precision bf16`` (fp32 on a CPU
  without native bf16, printed) vs
  facenet-pytorch's README loop (``face = mtcnn(img); emb = resnet(face.unsqueeze(0))``, fp32),
  the same seeded random InceptionResnetV1 weights (bench/embed.py). Target: ratio >= 4.

faceprobe reads a temporary folder of symlinks to the N images (reader ``folder``, names keep the
sorted order) and writes a fresh store with ``--no-progress --json``; its own images/s (the embed
pass without imports and model loading) is printed next to the whole-process rate, and so is each
baseline's in-loop rate. The baselines (the loops in bench/speed_loops.py) are
``python bench/embed_speed.py _baseline NAME ...``: neither file imports anything heavy at module
level, so they pay only for what they use. Every process gets the same environment (no thread
settings: torch and onnxruntime use all cores, faceprobe its default worker count). Faces embedded by each side are counted, and embeddings of the images both
sides embedded are compared (cosine; for random FaceNet weights also after centering, see
bench/embed.py). Only ratios from the same run mean anything on a shared machine; the load
average is recorded.

``--stages`` (or ``--only stages``): the arcface path's stages in this one process, torch at its
default threads: decode (``load_image``), MTCNN (``FaceDetector.locate`` one image per call vs
chunks of 16 images, as the pipeline's workers call it; facenet-pytorch's ``MTCNN.detect`` for
reference), alignment, and the backbone at batch 1 vs 64 (chips repeated to at least 128).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed_loops import BASELINES  # bench/ is sys.path[0] when this runs as a script

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw" / "lfw-deepfunneled"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilefacenet-foamliu.onnx"
CONTENDERS = ("arcface", "dlib", "facenet")
TARGETS = {"arcface": 3.0, "dlib": 1.6, "facenet": 4.0}
USABLE = ("ok", "multi_face_chosen", "no_face_fallback", "dataset_landmarks")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lfw_paths(root: Path, n: int) -> list[str]:
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    if not paths:
        sys.exit(f"no LFW images under {root}")
    if len(paths) < n:
        log(f"only {len(paths)} images under {root}; using all")
    return paths[:n]


# --- a baseline loop's own process (`_baseline NAME`) -------------------------------------------

def run_baseline_child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="embed_speed.py _baseline")
    ap.add_argument("name", choices=CONTENDERS)
    ap.add_argument("--paths", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--ort-spinning", choices=("default", "off"), default="default")
    a = ap.parse_args(argv)
    paths = Path(a.paths).read_text().splitlines()
    embs, faces, loop_s = BASELINES[a.name](paths, a.weights, a.ort_spinning == "default")
    import numpy as np
    import torch

    keys = sorted(embs)
    np.savez(a.out + ".npz", paths=np.array(keys), emb=np.stack([embs[k] for k in keys])
             if keys else np.zeros((0, 1)))
    Path(a.out).write_text(json.dumps({"faces": faces, "images_with_face": len(embs),
                                       "loop_s": loop_s, "torch_threads": torch.get_num_threads()}))


# --- the contenders, timed from spawn to exit ---------------------------------------------------

def faceprobe_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "faceprobe"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "faceprobe"]


def faceprobe_args(name: str, args) -> list[str]:
    if name == "arcface":
        return ["--backbone", args.arcface_backbone, "--weights", args.weights]
    if name == "dlib":
        return ["--backbone", "dlib.resnet"]
    return ["--backbone", "facenet.vggface2", "--weights", "random", "--precision",
            facenet_precision()]


def facenet_precision() -> str:
    """bf16 where the CPU has native bf16 kernels (AMX/AVX512-BF16), else fp32: emulated bf16
    is slower than fp32, and no user would pick it there (faceprobe warns)."""
    from faceprobe.embed.backbones.base import native_cpu_bf16

    return "bf16" if native_cpu_bf16() else "fp32"


def timed(cmd: list[str], env: dict, what: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def run_faceprobe(name: str, args, folder: Path, work: Path, env: dict) -> dict:
    out = work / f"store-{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*faceprobe_cmd(), "embed", "folder", "--root", str(folder), "--out", str(out),
           *faceprobe_args(name, args), "--no-progress", "--json", "--overwrite",
           "--detector", "mtcnn"]  # the baselines detect with MTCNN: like for like
    seconds, stdout = timed(cmd, env, f"faceprobe embed ({name})")
    summary = json.loads(stdout[stdout.index("{"):])
    faces = sum(v for k, v in summary["status"].items() if k in USABLE)
    return {"seconds": seconds, "faces": faces, "status": summary["status"],
            "own_img_s": summary.get("images_per_s"), "workers": summary.get("workers"),
            "store": str(out), "cmd": " ".join(cmd)}


def run_baseline(name: str, args, paths_file: Path, work: Path, env: dict) -> dict:
    res = work / f"baseline-{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_baseline", name,
           "--paths", str(paths_file), "--out", str(res), "--weights", args.weights,
           "--ort-spinning", args.baseline_ort_spinning]
    seconds, _ = timed(cmd, env, f"baseline {name}")
    r = json.loads(res.read_text())
    r["seconds"] = seconds
    r["emb_file"] = str(res) + ".npz"
    return r


def agreement(fp: dict, base: dict, links: dict[str, str]) -> dict:
    """Cosine between both sides' embeddings of the images both embedded (raw and centered)."""
    import numpy as np

    from faceprobe.embed.store import Store

    data = Store(fp["store"]).load()
    ours = {links.get(p, p): e for p, e in zip(data.path.tolist(), data.X["embedding"],
                                               strict=True)}
    z = np.load(base["emb_file"])
    theirs = dict(zip(z["paths"].tolist(), z["emb"], strict=True))
    common = [p for p in theirs if p in ours]
    if len(common) < 2:
        return {"compared": len(common)}
    a = np.stack([ours[p] for p in common]).astype(np.float64)
    b = np.stack([theirs[p] for p in common]).astype(np.float64)

    def cos(x, y):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        return (x * y).sum(1)

    raw, cen = cos(a, b), cos(a - b.mean(0), b - b.mean(0))
    return {"compared": len(common), "cos_mean": round(float(raw.mean()), 4),
            "cos_p5": round(float(np.percentile(raw, 5)), 4),
            "cos_centered_mean": round(float(cen.mean()), 4)}


def bench_contender(name: str, args, paths: list[str], folder: Path, paths_file: Path,
                    work: Path, env: dict, links: dict[str, str]) -> dict:
    fps, bases = [], []
    for r in range(args.repeat):
        log(f"[{name}] run {r + 1}/{args.repeat}: faceprobe embed")
        fps.append(run_faceprobe(name, args, folder, work, env))
        log(f"[{name}] run {r + 1}/{args.repeat}: baseline loop")
        bases.append(run_baseline(name, args, paths_file, work, env))
    n = len(paths)
    fp_s = statistics.median(f["seconds"] for f in fps)
    base_s = statistics.median(b["seconds"] for b in bases)
    fp, base = fps[-1], bases[-1]
    own = [f["own_img_s"] for f in fps if f["own_img_s"]]
    return {
        "images": n, "target_ratio": TARGETS[name],
        "faceprobe_img_s": round(n / fp_s, 2), "baseline_img_s": round(n / base_s, 2),
        "ratio": round(base_s / fp_s, 2),
        "faceprobe_seconds": [round(f["seconds"], 2) for f in fps],
        "baseline_seconds": [round(b["seconds"], 2) for b in bases],
        "faceprobe_own_img_s": statistics.median(own) if own else None,
        "baseline_loop_img_s": round(n / statistics.median(b["loop_s"] for b in bases), 2),
        "faceprobe_faces": fp["faces"], "faceprobe_status": fp["status"],
        "faceprobe_workers": fp["workers"],
        "baseline_faces": base["faces"], "baseline_images_with_face": base["images_with_face"],
        "baseline_torch_threads": base["torch_threads"],
        "agreement": agreement(fp, base, links), "faceprobe_cmd": fp["cmd"],
    }


# --- per-stage rates of the arcface path, in this process ----------------------------------------

def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else float("inf")


def bench_stages(args, paths: list[str]) -> dict:
    import numpy as np
    import torch

    from faceprobe.embed.align import align_face
    from faceprobe.embed.backbones import create_backbone
    from faceprobe.embed.detect import FaceDetector
    from faceprobe.embed.images import load_image

    out: dict = {"torch_threads": torch.get_num_threads(), "images": len(paths)}
    t0 = time.perf_counter()
    imgs = [load_image(p) for p in paths]
    out["decode_img_s"] = _rate(len(imgs), time.perf_counter() - t0)

    det = FaceDetector("cpu", multi_face="central")
    det.locate(imgs[:1])  # loads the nets
    t0 = time.perf_counter()
    for img in imgs:
        det.locate([img])
    out["detect_single_img_s"] = _rate(len(imgs), time.perf_counter() - t0)
    t0 = time.perf_counter()
    results = []
    for k in range(0, len(imgs), 16):
        results += det.locate(imgs[k:k + 16])
    out["detect_batched16_img_s"] = _rate(len(imgs), time.perf_counter() - t0)

    from facenet_pytorch import MTCNN
    from PIL import Image
    mtcnn = MTCNN(keep_all=False)
    pil = [Image.fromarray(i) for i in imgs]
    mtcnn.detect(pil[0], landmarks=True)
    t0 = time.perf_counter()
    for im in pil:
        mtcnn.detect(im, landmarks=True)
    out["facenet_pytorch_detect_img_s"] = _rate(len(pil), time.perf_counter() - t0)

    bb = create_backbone(args.arcface_backbone, weights=args.weights, device="cpu")
    pairs = [(imgs[i], f) for i, r in enumerate(results) for f in r.faces]
    t0 = time.perf_counter()
    chips = [align_face(img, bb.config, f.landmarks, f.box) for img, f in pairs]
    out["align_chips_s"] = _rate(len(chips), time.perf_counter() - t0)
    if not chips:
        return out
    batch = np.stack(chips)
    batch = np.concatenate([batch] * max(1, -(-128 // len(batch))))
    out["backbone_chips"] = len(batch)
    bb.embed(batch[:64], batch_size=64)  # warm-up
    for bs in (1, 64):
        t0 = time.perf_counter()
        bb.embed(batch, batch_size=bs)
        out[f"backbone_batch{bs}_chips_s"] = _rate(len(batch), time.perf_counter() - t0)
    return out


# --- main ---------------------------------------------------------------------------------------

def startup(env: dict) -> dict:
    """Seconds for `faceprobe --help` and `faceprobe embed --help` (process start to exit)."""
    out = {}
    for key, extra in (("help_s", ["--help"]), ("embed_help_s", ["embed", "--help"])):
        out[key] = round(timed([*faceprobe_cmd(), *extra], env, "faceprobe --help")[0], 3)
    return out


def report(res: dict) -> str:
    lines = [f"{res['images']} LFW images, {res['cpu']} CPUs, load avg {res['load_avg_start']:.2f}"
             f" -> {res['load_avg_end']:.2f}; faceprobe --help {res['startup']['help_s']:.2f}s"]
    for name in CONTENDERS:
        r = res["contenders"].get(name)
        if not r:
            continue
        if "error" in r:
            lines.append(f"{name:8s} FAILED: {r['error'].splitlines()[0]}")
            continue
        ok = "ok" if r["ratio"] >= r["target_ratio"] else "BELOW TARGET"
        if name == "arcface":
            ok += f"; baseline ORT spinning {res['baseline_ort_spinning']}"
        if name == "facenet":
            ok += f"; faceprobe in {facenet_precision()}"
        ag = r["agreement"]
        lines.append(
            f"{name:8s} faceprobe {r['faceprobe_img_s']:7.2f} img/s (own {r['faceprobe_own_img_s']}"
            f" img/s)  baseline {r['baseline_img_s']:7.2f} img/s (loop "
            f"{r['baseline_loop_img_s']} img/s)  ratio {r['ratio']:.2f}x "
            f"(target >= {r['target_ratio']}x: {ok})")
        lines.append(
            f"{'':8s} faces: faceprobe {r['faceprobe_faces']}, baseline {r['baseline_faces']} "
            f"in {r['baseline_images_with_face']} images; cosine on {ag.get('compared')} common: "
            f"{ag.get('cos_mean')} (p5 {ag.get('cos_p5')}, centered {ag.get('cos_centered_mean')})")
    if "stages" in res:
        s = res["stages"]
        lines.append(
            f"stages (arcface path, one process, {s['torch_threads']} torch threads): decode "
            f"{s['decode_img_s']} img/s; MTCNN single {s['detect_single_img_s']} vs batched(16) "
            f"{s['detect_batched16_img_s']} img/s (facenet-pytorch detect "
            f"{s['facenet_pytorch_detect_img_s']}); align {s['align_chips_s']} chips/s; backbone "
            f"batch 1 {s.get('backbone_batch1_chips_s')} vs 64 {s.get('backbone_batch64_chips_s')}"
            " chips/s")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        run_baseline_child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="first N sorted LFW images (default 300)")
    ap.add_argument("--only", default=",".join(CONTENDERS),
                    help=f"comma-separated subset of {', '.join(CONTENDERS)}, stages")
    ap.add_argument("--stages", action="store_true", help="also per-stage rates (arcface path)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per side, interleaved; the median time is reported")
    ap.add_argument("--arcface-backbone", default="arcface.mobilefacenet",
                    help="faceprobe backbone for the arcface pair (e.g. arcface.onnx)")
    ap.add_argument("--weights", default=str(WEIGHTS), help="the ArcFace ONNX file")
    ap.add_argument("--lfw", default=str(LFW), help="lfw-deepfunneled folder")
    ap.add_argument("--baseline-ort-spinning", choices=("default", "off"), default="default",
                    help="arcface baseline: onnxruntime's default session (its idle threads "
                         "spin, slowing the MTCNN calls between runs) or spinning off")
    ap.add_argument("--json", dest="json_out", help="write the results here")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in (*CONTENDERS, "stages")]
    if bad:
        ap.error(f"--only {', '.join(bad)}; choose from {', '.join(CONTENDERS)}, stages")
    if args.stages and "stages" not in only:
        only.append("stages")

    env = {**os.environ, "KERAS_BACKEND": "torch"}
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, str(REPO))
    paths = lfw_paths(Path(args.lfw), args.n)
    res: dict = {"images": len(paths), "cpu": os.cpu_count(), "load_avg_start": os.getloadavg()[0],
                 "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
                 "arcface_backbone": args.arcface_backbone, "weights": args.weights,
                 "baseline_ort_spinning": args.baseline_ort_spinning,
                 "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",
                                                                "MKL_NUM_THREADS")},
                 "contenders": {}}
    res["startup"] = startup(env)
    with tempfile.TemporaryDirectory(prefix="faceprobe-speed-") as tmp:
        work = Path(tmp)
        folder = work / "images"
        folder.mkdir()
        links = {}
        for i, p in enumerate(paths):
            link = folder / f"{i:06d}_{Path(p).name}"
            link.symlink_to(p)
            links[str(link)] = p
        paths_file = work / "paths.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        for name in CONTENDERS:
            if name in only:
                try:
                    res["contenders"][name] = bench_contender(name, args, paths, folder,
                                                              paths_file, work, env, links)
                except RuntimeError as exc:
                    log(str(exc))
                    res["contenders"][name] = {"error": str(exc)}
        if "stages" in only:
            log("stages")
            res["stages"] = bench_stages(args, paths)
    res["load_avg_end"] = os.getloadavg()[0]
    print(report(res))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
