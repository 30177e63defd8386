"""Face detectors side by side: SCRFD-2.5GF (faceprobe/embed/detect_scrfd.py) vs MTCNN.

    python bench/detectors.py                                  # MTFL (all) + 300 LFW images
    python bench/detectors.py --detectors scrfd,scrfd:size=256,scrfd:bgr --datasets mtfl --limit 600

Per detector and dataset, through ``locate(images)`` with ``multi_face='all'`` (so each
detector's own second look and minimum face size apply, as in the embed pipeline):

- ``recall``: fraction of images with at least one face;
- ``img/s``: images per second of ``locate`` over chunks of ``--chunk`` decoded images (decoding
  not timed), on every core this process may use;
- MTFL only (5 annotated points per image): on the matched face (the detected face whose box
  overlaps the annotation-derived box, :func:`faceprobe.embed.detect.box_from_landmarks`, the
  most) the 5-point NME normalised by the inter-ocular distance (annotated eye centres), its
  mean and median, and the median signed error (detected - annotated) in x and y over all points,
  in pixels; ``NME-1`` is the same NME against the annotations minus 1 px (the hypothesis that
  MTFL's coordinates are 1-based, MATLAB style: then every detector's median error sits ~1 px
  up-left and ``NME-1`` is lower).

MTFL here is the training part in ../shared/data/mtfl (lfw_5590 + net_7876; the AFLW test part,
testing.txt, is read too when present). Rows per image part are printed as well
(``mtfl/lfw_5590``, ``mtfl/net_7876``...). Results also go to --json.

Detector specs: ``mtcnn``, or ``scrfd`` with options after colons: ``size=N`` (input_size),
``retry=N`` (retry_size, 0 for none), ``thr=X`` (score threshold), ``bgr`` (images fed with
their channels swapped), e.g. ``scrfd:size=256:bgr``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data"


def load_mtfl(root: Path, limit: int | None, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(relative path, RGB image, (5, 2) annotated points) for MTFL's listed images."""
    from faceprobe.data.mtfl import parse_line

    rows = []
    for name in ("training.txt", "testing.txt"):
        f = root / name
        if not f.is_file():
            continue
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            rel, pts, _, _ = parse_line(line)
            if (root / rel).is_file():
                rows.append((rel, pts))
    if limit is not None and limit < len(rows):
        idx = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
        rows = [rows[i] for i in idx]
    return [(rel, np.asarray(Image.open(root / rel).convert("RGB")), pts) for rel, pts in rows]


def load_lfw(root: Path, n: int, seed: int) -> list[tuple[str, np.ndarray, None]]:
    files = sorted((root / "lfw-deepfunneled").glob("*/*.jpg"))
    idx = np.sort(np.random.default_rng(seed).choice(len(files), min(n, len(files)),
                                                     replace=False))
    return [(str(files[i].relative_to(root)), np.asarray(Image.open(files[i]).convert("RGB")),
             None) for i in idx]


def make_detector(spec: str):
    name, *opts = spec.split(":")
    if name == "mtcnn":
        from faceprobe.embed.detect import FaceDetector

        return FaceDetector(multi_face="all"), False
    if name == "scrfd":
        from faceprobe.embed.detect_scrfd import ScrfdDetector

        kw, bgr = {}, False
        for o in opts:
            if o == "bgr":
                bgr = True
            elif o.startswith("size="):
                kw["input_size"] = int(o[5:])
            elif o.startswith("retry="):
                kw["retry_size"] = int(o[6:]) or None
            elif o.startswith("thr="):
                kw["score_threshold"] = float(o[4:])
            else:
                raise SystemExit(f"unknown scrfd option {o!r}")
        det = ScrfdDetector(multi_face="all", **kw)
        _ = det.session  # built (and the graph edit cached) before timing
        return det, bgr
    raise SystemExit(f"unknown detector {spec!r}; mtcnn or scrfd[:size=N][:bgr][:retry=N]")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def run(det, bgr: bool, items, chunk: int) -> tuple[list, float]:
    images = [img[..., ::-1].copy() if bgr else img for _, img, _ in items]
    # warm-up outside the timing (first-call allocations, MTCNN's lazy nets)
    det.locate(images[:2])
    t0 = time.perf_counter()
    results = []
    for s in range(0, len(images), chunk):
        results += det.locate(images[s:s + chunk])
    return results, time.perf_counter() - t0


def measure(items, results, seconds: float) -> dict:
    from faceprobe.embed.detect import box_from_landmarks

    found = [bool(r.faces) for r in results]
    row = {"images": len(items), "recall": float(np.mean(found)) if found else float("nan"),
           "img_per_s": len(items) / seconds if seconds > 0 else float("nan"),
           "missed": [rel for (rel, _, _), f in zip(items, found, strict=True) if not f][:20]}
    nme, nme1, errs, ious = [], [], [], []
    for (_, _, pts), r in zip(items, results, strict=True):
        if pts is None or not r.faces:
            continue
        ref = box_from_landmarks(pts)
        overlaps = [iou(f.box, ref) for f in r.faces]
        best = r.faces[int(np.argmax(overlaps))]
        if best.landmarks is None:
            continue
        ious.append(max(overlaps))
        iod = float(np.linalg.norm(pts[0] - pts[1]))
        d = best.landmarks - pts
        errs.append(d)
        nme.append(float(np.linalg.norm(d, axis=1).mean() / iod))
        nme1.append(float(np.linalg.norm(best.landmarks - (pts - 1.0), axis=1).mean() / iod))
    if errs:
        e = np.concatenate(errs)
        row.update(nme_mean=float(np.mean(nme)), nme_median=float(np.median(nme)),
                   nme1_mean=float(np.mean(nme1)), nme1_median=float(np.median(nme1)),
                   median_dx=float(np.median(e[:, 0])), median_dy=float(np.median(e[:, 1])),
                   matched=len(errs), median_iou=float(np.median(ious)),
                   nme_over_0_1=float(np.mean(np.array(nme) > 0.1)))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", default="scrfd,mtcnn")
    ap.add_argument("--datasets", default="mtfl,lfw")
    ap.add_argument("--limit", type=int, default=None, help="MTFL images (seeded sample); all by "
                    "default")
    ap.add_argument("--lfw", type=int, default=300, help="LFW images (seeded sample)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "detectors.json"))
    args = ap.parse_args(argv)

    data = {}
    for ds in args.datasets.split(","):
        if ds == "mtfl":
            data["mtfl"] = load_mtfl(SHARED / "mtfl", args.limit, args.seed)
        elif ds == "lfw":
            data["lfw"] = load_lfw(SHARED / "lfw", args.lfw, args.seed)
        else:
            raise SystemExit(f"unknown dataset {ds!r}; mtfl or lfw")
    rows = []
    for spec in args.detectors.split(","):
        det, bgr = make_detector(spec)
        for ds, items in data.items():
            results, seconds = run(det, bgr, items, args.chunk)
            row = {"detector": spec, "dataset": ds, **measure(items, results, seconds)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "missed"}), flush=True)
            if ds == "mtfl":  # per image part (lfw_5590, net_7876, AFLW...)
                parts = sorted({rel.split("/")[0] for rel, _, _ in items})
                for part in parts if len(parts) > 1 else ():
                    k = [i for i, (rel, _, _) in enumerate(items) if rel.split("/")[0] == part]
                    sub = measure([items[i] for i in k], [results[i] for i in k],
                                  seconds * len(k) / len(items))
                    sub["img_per_s"] = float("nan")  # timed together, not per part
                    rows.append({"detector": spec, "dataset": f"mtfl/{part}", **sub})

    print()
    print("| detector | dataset | images | recall | img/s | NME mean | NME median | NME-1 mean "
          "| median dx, dy (px) | NME>0.1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        nme = (f"{r['nme_mean']:.4f} | {r['nme_median']:.4f} | {r['nme1_mean']:.4f} | "
               f"{r['median_dx']:+.2f}, {r['median_dy']:+.2f} | {r['nme_over_0_1']:.3f}"
               if "nme_mean" in r else "- | - | - | - | -")
        print(f"| {r['detector']} | {r['dataset']} | {r['images']} | {r['recall']:.4f} | "
              f"{r['img_per_s']:.1f} | {nme} |")
    for r in rows:
        if r["missed"] and "/" not in r["dataset"]:
            print(f"{r['detector']} on {r['dataset']} missed: {', '.join(r['missed'][:10])}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
