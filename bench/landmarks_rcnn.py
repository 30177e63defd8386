"""KeypointRCNN on a CPU (issue 18): train `faceprobe landmarks train` on MTFL with its default
face-pretrained MobileFaceNet FPN, then compare its points with MTCNN's and SCRFD's on the
images it never saw.

    python bench/landmarks_rcnn.py [--epochs 4] [--workdir /tmp/faceprobe-bench/rcnn]

1. Embed MTFL's 3,334 training images (``../shared/data/mtfl``) with MTCNN into a store.
2. ``faceprobe landmarks train STORE`` (defaults: ``--backbone mobilefacenet --holdout 0.2``),
   timed; the held-out 20% of the images (a seeded hash of each path) are never trained on.
3. Write an MTFL label file of exactly the held-out images and embed it twice, with MTCNN and
   with SCRFD; predict the KeypointRCNN into the MTCNN copy.
4. ``faceprobe landmarks evaluate`` on that copy for MTCNN's and the KeypointRCNN's points and
   on the SCRFD copy for SCRFD's: the same images for all three. Table printed, CED curves in
   ``reports/landmarks_rcnn/ced.png``, results in ``--json``.

Set ``OMP_WAIT_POLICY=PASSIVE`` when the machine is shared: torch's OpenMP threads otherwise
spin against other processes (measured 2.97 vs 0.39 s per training image under load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
MTFL = SHARED / "data" / "mtfl"


def cli(argv: list[str]) -> dict:
    """`faceprobe ARGV --json`, in this process; the printed JSON."""
    import contextlib
    import io

    from faceprobe.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*argv, "--json"])
    if code:
        raise SystemExit(f"faceprobe {' '.join(argv)} failed ({code})")
    return json.loads(buf.getvalue())


def embed(root: Path, out: Path, detector: str) -> None:
    if (out / "manifest.json").exists():
        return  # resumed by faceprobe itself when incomplete; here: already there
    cli(["embed", "mtfl", "--root", str(root), "--out", str(out), "--backbone",
         "arcface.mobilefacenet", "--detector", detector, "--no-progress"])


def held_out_root(store: Path, model: Path, workdir: Path) -> Path:
    """An MTFL folder whose label file lists exactly the images the model did not train on."""
    import torch

    from faceprobe.embed.store import Store

    trained = set(torch.load(model / "checkpoint.pt", map_location="cpu",
                             weights_only=True)["trained_paths"])
    paths = {str(p) for p in Store(store).load(features=(), usable_only=False).path}
    keep = {str(Path(p).resolve()) for p in paths - trained}
    root = workdir / "mtfl-heldout"
    root.mkdir(parents=True, exist_ok=True)
    for part in ("lfw_5590", "net_7876"):
        if not (root / part).exists():
            (root / part).symlink_to(MTFL / part)
    lines = []
    for line in (MTFL / "training.txt").read_text().splitlines():
        rel = line.strip().split()[0].replace("\\", "/") if line.strip() else ""
        if rel and str((MTFL / rel).resolve()) in keep:
            lines.append(line)
    (root / "training.txt").write_text("\n".join(lines) + "\n")
    print(f"held-out images: {len(lines)} of {len(paths)} ({len(trained)} trained on)", flush=True)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workdir", default="/tmp/faceprobe-bench/rcnn")
    ap.add_argument("--model", default=None, help="model directory (default: WORKDIR/model)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "landmarks_rcnn.json"))
    args = ap.parse_args()
    if not MTFL.is_dir():
        raise SystemExit(f"needs MTFL at {MTFL}")
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    store = wd / "mtfl-mtcnn"
    embed(MTFL, store, "mtcnn")
    model = Path(args.model) if args.model else wd / "model"
    t0 = time.perf_counter()
    trained = cli(["landmarks", "train", str(store), "--out", str(model), "--epochs",
                   str(args.epochs), "--device", "cpu"])
    train_s = sum(h["seconds"] for h in trained["history"])
    print(f"trained {trained['epochs_done']} epochs on {trained['faces']} faces: {train_s:.0f} s "
          f"of epochs ({time.perf_counter() - t0:.0f} s this run)", flush=True)

    root = held_out_root(store, model, wd)
    mt, sc = wd / "heldout-mtcnn", wd / "heldout-scrfd"
    embed(root, mt, "mtcnn")
    embed(root, sc, "scrfd")
    cli(["landmarks", "predict", str(model), str(mt), "--device", "cpu"])
    rows = {
        "MTCNN": cli(["landmarks", "evaluate", str(mt)]),
        "SCRFD": cli(["landmarks", "evaluate", str(sc)]),
        "KeypointRCNN (MobileFaceNet FPN)": cli(["landmarks", "evaluate", str(mt),
                                                 "--source", "rcnn"]),
    }
    from faceprobe.landmarks.evaluate import plot_ced

    plot_ced({k: (r["ced"]["thresholds"], r["ced"][r["norm"]]) for k, r in rows.items()},
             REPO / "reports" / "landmarks_rcnn" / "ced.png",
             title="MTFL held-out images (inter-ocular NME)")
    print("| points | faces | NME mean | median | NME > 0.10 | AUC@0.10 | NME (box size) |")
    print("|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['evaluated']} (+{r['missing']} missing) | {r['nme']:.4f} | "
              f"{r['median']:.4f} | {100 * r['failure_rate']:.1f}% | {r['auc']:.3f} | "
              f"{r['nme_box_size']:.4f} |")
    out = {"train": {k: trained[k] for k in ("epochs_done", "faces", "skipped", "history")},
           "train_seconds": train_s, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "results": {k: {kk: r[kk] for kk in ("nme", "median", "failure_rate", "auc",
                                                "evaluated", "missing", "per_point",
                                                "nme_box_size")} for k, r in rows.items()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"results: {args.json}; CED: reports/landmarks_rcnn/ced.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
