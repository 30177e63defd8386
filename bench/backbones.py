"""Quality per backbone and per combination, on every real dataset (README "Backbones side by side").

    python bench/backbones.py --backbone dlib.resnet,arcface.mobilefacenet
    python bench/backbones.py --backbone dlib.resnet,arcface.mobilefacenet --datasets lfw,utkface

Each dataset under ../shared/data is embedded once, in one detection pass, with every backbone
named (the first is the ``embedding`` group, each further one a group named after it; cached in
--workdir and resumed; a cached store that lacks a backbone gets it by ``--add-features``).
Then, for each backbone alone and for all of them concatenated:

- ``lfw``: verification on the 4 folds of pairs.txt (fold-wise thresholds), per backbone.
- ``utkface``: the Keras head, an RBF SVM and logistic regression (inverse-frequency weights,
  tasks gender, race, age) on one seeded split; test rows only: gender accuracy, race accuracy
  and balanced accuracy, age MAE (``bench/quality_utkface.py``'s ``measure``; ``--seeds N``
  averages the Keras head over N head seeds).
- ``celeba``: one head per attribute (logistic regression) on an identity-disjoint split (25% of
  identities held out), with and without the geometry68/hog groups; Smiling, Male and the mean
  of the 40 attributes (``bench/feature_groups.py``'s ``evaluate``).
- ``mtfl``: the Keras head and logistic regression on gender, smiling (seeded split; test rows).

Results go to --json (default bench/results/backbones.json) and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import faceprobe  # noqa: E402,F401  (sets the Keras backend)

SHARED = REPO.parent / "shared" / "data"
EMBED_OPTIONS = {"utkface": {"no_face": "whole_image"},
                 "celeba": {"features": ("embedding", "geometry68", "hog")}}


def store_for(dataset: str, backbones: list[str], weights, workdir: Path) -> Path:
    from faceprobe.data.registry import get_reader
    from faceprobe.embed.add_features import add_features
    from faceprobe.embed.pipeline import embed_dataset, format_summary
    from faceprobe.embed.store import Store

    root = SHARED / dataset
    out = workdir / f"{dataset}-{backbones[0]}"
    reader = get_reader(dataset, str(root))
    t0 = time.perf_counter()
    if not (out / "manifest.json").exists() or not Store(out).info()["complete"]:
        s = embed_dataset(reader.records(), out, ",".join(backbones), weights=weights,
                          vocabularies=reader.vocabularies(), dataset=dataset,
                          root=str(root.resolve()), show_progress=False, detector="mtcnn",
                          **EMBED_OPTIONS.get(dataset, {}))  # the README's numbers: MTCNN
        print(format_summary(s), f"({time.perf_counter() - t0:.0f}s)", flush=True)
    missing = [b for b in backbones[1:] if b not in Store(out).feature_dims]
    if missing:
        s = add_features(out, missing, backbone=backbones[0], show_progress=False)
        print(f"{dataset}: added {', '.join(s['added'])} in {s['seconds']:.0f}s", flush=True)
    return out


def group_sets(backbones: list[str]) -> dict[str, list[str]]:
    groups = {b: ("embedding" if i == 0 else b) for i, b in enumerate(backbones)}
    sets = {b: [g] for b, g in groups.items()}
    if len(backbones) > 1:
        sets[" + ".join(backbones)] = list(groups.values())
    return sets


def bench_lfw(store: Path, backbones: list[str]) -> dict:
    from faceprobe.identity.verification import verify

    out = {}
    for name, groups in group_sets(backbones).items():
        if len(groups) > 1:
            continue
        r = verify(store, SHARED / "lfw" / "pairs.txt", feature=groups[0])
        out[name] = {"accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"],
                     "roc_auc": r.get("roc_auc"), "pairs": r.get("pairs")}
        print(f"lfw {name}: accuracy {r['accuracy']:.4f} ± {r['accuracy_std']:.4f}", flush=True)
    return out


def bench_utkface(store_path: Path, backbones: list[str], heads: list[str], seeds: int = 1
                  ) -> dict:
    from quality_utkface import METRICS, SEEDED, measure

    from faceprobe.embed.store import Store

    store = Store(store_path)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, groups in group_sets(backbones).items():
            for head in heads:
                n = seeds if head in SEEDED else 1
                runs = [measure(store, head, "inverse", Path(tmp), head_seed=k, features=groups)
                        for k in range(n)]
                r = {**runs[0], **{m: float(np.mean([x[m] for x in runs])) for m in METRICS},
                     "seeds": n}
                out[f"{name} | {head}"] = r
                print(f"utkface {name:40s} {head:6s} gender {r['gender_acc']:.4f} race "
                      f"{r['race_acc']:.4f} (balanced {r['race_balanced_acc']:.4f}) age MAE "
                      f"{r['age_mae']:.2f} [{r['test_rows']} test rows, mean of {n} seed(s)]",
                      flush=True)
    return out


def bench_celeba(store: Path, backbones: list[str]) -> dict:
    from feature_groups import evaluate

    sets = {}
    for name, groups in group_sets(backbones).items():
        sets[name] = groups
        sets[f"{name} + geometry68 + hog"] = [*groups, "geometry68", "hog"]
    res = evaluate(store, sets, "logreg", 0, 0.25)
    return {"split": res["split"], "rows": res["rows"], "identities_shared":
            res["identities_shared"],
            "sets": {n: {"Smiling": s["accuracy"].get("Smiling"), "Male": s["accuracy"].get("Male"),
                         "mean40": s["mean"]} for n, s in res["sets"].items()}}


def bench_mtfl(store_path: Path, backbones: list[str], heads: list[str]) -> dict:
    from sklearn import metrics as skm

    from faceprobe.embed.store import Store
    from faceprobe.heads.bundle import load_bundle
    from faceprobe.heads.splits import make_split
    from faceprobe.heads.train import train_store

    store = Store(store_path)
    tasks = ["gender", "smiling"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, groups in group_sets(backbones).items():
            for head in heads:
                res = train_store(store, tasks, head, out=Path(tmp) / f"{head}-{len(out)}",
                                  features=groups, overwrite=True)
                bundle = load_bundle(res.bundle)
                data = store.load(features=groups, tasks=tasks)
                test = data.subset(make_split(data, seed=0).test)
                pred = bundle.predict_outputs(test.X)
                r = {"test_rows": int(len(test))}
                for t in tasks:
                    k = test.y[t] >= 0
                    r[f"{t}_acc"] = skm.accuracy_score(test.y[t][k], pred[t].argmax(1)[k])
                out[f"{name} | {head}"] = r
                print(f"mtfl {name:40s} {head:6s} gender {r['gender_acc']:.4f} smiling "
                      f"{r['smiling_acc']:.4f} [{r['test_rows']} test rows]", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True, help="comma-separated backbone names")
    ap.add_argument("--weights", default=None, help="weights files, comma-separated, as embed's")
    ap.add_argument("--datasets", default="lfw,utkface,celeba,mtfl")
    ap.add_argument("--heads", default="mlp,svm,logreg", help="heads for utkface and mtfl")
    ap.add_argument("--seeds", type=int, default=1,
                    help="utkface: the Keras head's mean over N head seeds (one seed moves test "
                         "accuracy by about a point)")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "results" / "stores")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "backbones.json")
    args = ap.parse_args()
    backbones = [b.strip() for b in args.backbone.split(",") if b.strip()]
    heads = args.heads.split(",")
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for ds in args.datasets.split(","):
        if not (SHARED / ds).is_dir():
            print(f"skipping {ds}: no {SHARED / ds}", file=sys.stderr)
            continue
        store = store_for(ds, backbones, args.weights, args.workdir)
        if ds == "lfw":
            results["lfw"] = bench_lfw(store, backbones)
        elif ds == "utkface":
            results["utkface"] = bench_utkface(store, backbones, heads, args.seeds)
        elif ds == "celeba":
            results["celeba"] = bench_celeba(store, backbones)
        elif ds == "mtfl":
            results["mtfl"] = bench_mtfl(store, backbones, [h for h in heads if h != "svm"])
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
