"""Head quality on real dlib embeddings of UTKFace (issue 4 acceptance numbers).

Usage: python bench/quality_utkface.py STORE [--heads mlp,svm,logreg,knn] [--tune 20] [--seeds 5]
                                           [--features embedding] [--json OUT]

STORE is made with:
    faceprobe embed utkface --root ../shared/data/utkface --out STORE --backbone dlib.resnet \
        --no-face whole_image
Every head is trained on the same seeded split (tasks gender, race, age) and measured on its test
rows: gender accuracy overall and on adults (age >= 18), race accuracy and balanced accuracy,
age MAE. Also the race balanced accuracy of each head trained without class weights, to show
what inverse-frequency weighting buys. ``--tune N`` adds, per head, a KerasTuner search of N
trials (bayes for the baselines, random for the MLP) on the same split's validation rows, its
best refitted and measured on the same test rows (the baselines take each task's best trial).
``--seeds N`` trains the seeded heads with N head seeds on the same split and prints their mean:
one seed's test accuracy moves by about a point, as much as the gaps being compared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from faceprobe.embed.store import Store
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.splits import make_split
from faceprobe.heads.train import train_store
from faceprobe.heads.tune import tune_store

TASKS = ["gender", "race", "age"]
SEEDED = ("mlp", "hgb")  # heads whose fit depends on their seed
METRICS = ("gender_acc", "gender_acc_adults", "gender_acc_under10", "race_acc",
           "race_balanced_acc", "age_mae")


def measure(store: Store, head: str, weighting: str, tmp: Path, tune: int = 0,
            head_seed: int = 0, features: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    out = tmp / f"{head}-{weighting}-{tune}-{head_seed}"
    if tune:
        res = tune_store(store, TASKS, head=head, tuner="random" if head == "mlp" else "bayes",
                         trials=tune, directory=tmp / f"search-{head}-{weighting}", out=out,
                         class_weighting=weighting, overwrite=True, features=features)
    else:
        # the split is always seed 0's; head_seed only changes the head's own randomness
        res = train_store(store, TASKS, head, out=out, class_weighting=weighting, overwrite=True,
                          params={"seed": head_seed}, features=features)
    seconds = time.perf_counter() - t0
    bundle = load_bundle(res.bundle)
    data = store.load(features=list(bundle.features), tasks=TASKS)
    test = data.subset(make_split(data, seed=0).test)
    out = bundle.predict_outputs(test.X)
    g, r, a = test.y["gender"], test.y["race"], test.y["age"]
    gp, rp = out["gender"].argmax(1), out["race"].argmax(1)
    adult = (g >= 0) & (a >= 18)
    kg, kr, ka = g >= 0, r >= 0, np.isfinite(a)
    return {
        "head": head + (f" tuned ({tune} trials)" if tune else ""), "seed": head_seed,
        "class_weighting": weighting, "train_seconds": round(seconds, 1),
        "test_rows": int(len(test)),
        "gender_acc": skm.accuracy_score(g[kg], gp[kg]),
        "gender_acc_adults": skm.accuracy_score(g[adult], gp[adult]),
        "gender_acc_under10": skm.accuracy_score(g[kg & (a < 10)], gp[kg & (a < 10)]),
        "race_acc": skm.accuracy_score(r[kr], rp[kr]),
        "race_balanced_acc": skm.balanced_accuracy_score(r[kr], rp[kr]),
        "age_mae": skm.mean_absolute_error(a[ka], out["age"][ka]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--heads", default="mlp,svm,logreg,knn")
    ap.add_argument("--no-unweighted", action="store_true", help="skip the unweighted runs")
    ap.add_argument("--tune", type=int, default=0, help="also tune each head with N trials")
    ap.add_argument("--seeds", type=int, default=1,
                    help="train the seeded heads (mlp, hgb) with N head seeds; print their mean")
    ap.add_argument("--features", help="feature groups to use, comma-separated (default: every "
                    "group in the store; `embedding` is dlib's)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    store = Store(args.store)
    features = [f.strip() for f in args.features.split(",")] if args.features else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(h, w, n) for n in ([0, args.tune] if args.tune else [0])
                for h in args.heads.split(",")
                for w in (("inverse",) if args.no_unweighted else ("inverse", "none"))]
        for head, w, n in runs:
            seeds = range(args.seeds if head in SEEDED and not n else 1)
            got = [measure(store, head, w, Path(tmp), n, k, features) for k in seeds]
            if len(got) > 1:
                got.append({**{m: float(np.mean([r[m] for r in got])) for m in METRICS},
                            "head": f"{head} (mean of {len(got)} seeds)", "seed": None,
                            "class_weighting": w, "train_seconds": got[0]["train_seconds"]})
            for r in got:
                rows.append(r)
                print(f"{r['head']:7s} {w:8s} gender {r['gender_acc']:.4f} (adults "
                      f"{r['gender_acc_adults']:.4f}, <10 {r['gender_acc_under10']:.3f})  race "
                      f"{r['race_acc']:.4f} (balanced {r['race_balanced_acc']:.4f})  age MAE "
                      f"{r['age_mae']:.2f}  [{r['train_seconds']}s]", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
