"""Which detector's boxes and 5 points should feed alignment (issue 18, "does it help the
embeddings?"): the same datasets embedded once per detector, each with every backbone named.

    python bench/alignment.py [--detectors mtcnn,scrfd] [--datasets lfw,utkface]
                              [--backbone dlib.resnet,arcface.mobilefacenet]

- ``lfw``: verification on the 4 folds of pairs.txt (threshold from the other folds), per
  backbone group (``bench/backbones.py``'s ``bench_lfw``).
- ``utkface``: the Keras head on one seeded split, test rows only, each backbone alone and
  both concatenated (``bench_utkface``), ``--no-face whole_image`` as everywhere for UTKFace.
Stores are cached in --workdir per dataset and detector; results to --json and printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from backbones import EMBED_OPTIONS, SHARED, bench_lfw, bench_utkface  # noqa: E402

import faceprobe  # noqa: E402,F401  (sets the Keras backend)


def store_for(dataset: str, detector: str, backbones: list[str], workdir: Path) -> Path:
    from faceprobe.data.registry import get_reader
    from faceprobe.embed.pipeline import embed_dataset, format_summary
    from faceprobe.embed.store import Store

    root = SHARED / dataset
    out = workdir / f"{dataset}-{detector}-{'+'.join(backbones)}"
    if (out / "manifest.json").exists() and Store(out).info()["complete"]:
        return out
    reader = get_reader(dataset, str(root))
    t0 = time.perf_counter()
    s = embed_dataset(reader.records(), out, ",".join(backbones), detector=detector,
                      vocabularies=reader.vocabularies(), dataset=dataset,
                      root=str(root.resolve()), show_progress=False,
                      **{k: v for k, v in EMBED_OPTIONS.get(dataset, {}).items()
                         if k != "features"})
    print(f"{dataset} {detector}: {format_summary(s)} ({time.perf_counter() - t0:.0f}s)",
          flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detectors", default="mtcnn,scrfd")
    ap.add_argument("--datasets", default="lfw,utkface")
    ap.add_argument("--backbone", default="dlib.resnet,arcface.mobilefacenet")
    ap.add_argument("--workdir", default="/tmp/faceprobe-bench/alignment")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "alignment.json"))
    args = ap.parse_args()
    backbones = [b.strip() for b in args.backbone.split(",") if b.strip()]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for detector in args.detectors.split(","):
        for dataset in args.datasets.split(","):
            store = store_for(dataset, detector, backbones, workdir)
            if dataset == "lfw":
                results[f"lfw | {detector}"] = bench_lfw(store, backbones)
            elif dataset == "utkface":
                results[f"utkface | {detector}"] = bench_utkface(store, backbones, ["mlp"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
