"""Benchmark the heads: training time per head, scoring throughput and peak memory.

    python bench/heads.py                      # 10k and 100k rows, dims 128 and 512, 1M-row scoring
    python bench/heads.py --sizes 10000 --dims 128 --score-rows 200000   # quicker
    python bench/heads.py --skip-training --skip-scoring                  # only the 20-trial search

Training runs on synthetic embeddings with real signal (faceprobe.heads.synthetic), 85/15
train/validation, tasks gender, race, age; each time is printed with its ratio to logistic
regression measured in the same run. RBF SVM and k-NN are skipped above --max-kernel-rows
(their cost grows with n^2; say so rather than run for an hour).

Tuning times a 20-trial random MLP search on 10k rows, end to end, against one default MLP fit.

Scoring writes a synthetic store (cached in --workdir), then in fresh subprocesses (so peak RSS
(VmHWM) is the scorer's own) (a) reads the columns scoring needs with Store.iter_columns, the
baseline, and (b) scores it to CSV with an MLP bundle; it prints rows/s, peak RSS and the ratio of
(b) to (a).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faceprobe  # noqa: E402,F401  (sets the Keras backend)

TASKS = ["gender", "race", "age"]
ALL_HEADS = ["mlp", "logreg", "linsvm", "ridge", "hgb", "knn", "svm"]


def bench_training(sizes, dims, heads, max_kernel_rows):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from faceprobe.heads.baselines import make_head
    from faceprobe.heads.synthetic import synthetic_arrays

    print(f"{'rows':>7} {'dim':>4} {'head':<7} {'fit s':>8} {'x logreg':>9} {'gender':>7} "
          f"{'race':>6} {'race bal':>8} {'age MAE':>8}")
    results = []
    for dim in dims:
        for n in sizes:
            a = synthetic_arrays(int(n / 0.85), dim, seed=0)
            cut = n
            X, Xv = {"embedding": a["X"][:cut]}, {"embedding": a["X"][cut:]}
            y = {t: a[t][:cut] for t in TASKS}
            yv = {t: a[t][cut:] for t in TASKS}
            base = None
            order = ["logreg"] + [h for h in heads if h != "logreg"]
            for h in order:
                if h not in heads and h != "logreg":
                    continue
                if h in ("svm", "knn") and n > max_kernel_rows:
                    print(f"{n:>7} {dim:>4} {h:<7} skipped (O(n^2); raise --max-kernel-rows)")
                    continue
                model = make_head(h, tasks=TASKS)
                t0 = time.perf_counter()
                model.fit((X, y), validation=(Xv, yv))
                secs = time.perf_counter() - t0
                if h == "logreg":
                    base = secs
                p = model.predict(Xv)
                row = {"rows": n, "dim": dim, "head": h, "fit_s": secs,
                       "x_logreg": secs / base if base else None,
                       "gender": accuracy_score(yv["gender"], p["gender"]),
                       "race": accuracy_score(yv["race"], p["race"]),
                       "race_bal": balanced_accuracy_score(yv["race"], p["race"]),
                       "age_mae": float(np.abs(p["age"] - yv["age"]).mean())}
                results.append(row)
                if h == "logreg" and "logreg" not in heads:
                    continue
                print(f"{n:>7} {dim:>4} {h:<7} {secs:>8.2f} {row['x_logreg']:>9.2f} "
                      f"{row['gender']:>7.3f} {row['race']:>6.3f} {row['race_bal']:>8.3f} "
                      f"{row['age_mae']:>8.2f}", flush=True)
    return results


_CHILD = r"""
import json, sys, time
import faceprobe
from faceprobe.embed.store import Store
mode, store, bundle, out = sys.argv[1:5]
t = time.perf_counter()
if mode == "read":
    n = 0
    for d in Store(store).iter_columns(["embedding"], ("path", "status", "face")):
        n += len(d)
else:
    from faceprobe.heads.bundle import load_bundle
    from faceprobe.heads.score import score_store
    b = load_bundle(bundle)
    loaded = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    t = time.perf_counter()
    n = score_store(b, store, out)["rows"]
secs = time.perf_counter() - t
# VmHWM, not ru_maxrss: the latter keeps the forked parent's high-water mark across exec
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
res = {"rows": n, "seconds": secs, "rows_per_s": n / secs, "maxrss_mb": hwm / 1024}
if mode != "read":
    res["loaded_rss_mb"] = loaded / 1024  # imports + bundle, before the first row
print(json.dumps(res))
"""


def bench_scoring(rows, workdir: Path, shard_size: int):
    from faceprobe.embed.store import Store
    from faceprobe.errors import StoreError
    from faceprobe.heads.synthetic import write_synthetic_store
    from faceprobe.heads.train import train_store

    store = workdir / f"store-{rows}"
    try:
        ok = Store(store).info()["rows"] == rows
    except StoreError:
        ok = False
    if not ok:
        t0 = time.perf_counter()
        write_synthetic_store(store, rows, 128, shard_size=shard_size, failed_every=25,
                              backbone="bench.synthetic")
        print(f"wrote {rows}-row store in {time.perf_counter() - t0:.1f}s", flush=True)
    small = workdir / "train-store"
    write_synthetic_store(small, 10000, 128, backbone="bench.synthetic")
    bundle = workdir / "bundle-mlp"
    train_store(small, TASKS, "mlp", out=bundle, overwrite=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = {}
    for mode in ("read", "score"):
        out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(store), str(bundle),
                              str(workdir / "preds.csv")], capture_output=True, text=True,
                             env=env, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    size = (workdir / "preds.csv").stat().st_size / 1e6
    r, s = res["read"], res["score"]
    print(f"store read only (baseline): {r['rows_per_s']:>10,.0f} rows/s, "
          f"peak RSS {r['maxrss_mb']:.0f} MB")
    print(f"score to CSV ({size:.0f} MB):   {s['rows_per_s']:>10,.0f} rows/s, "
          f"peak RSS {s['maxrss_mb']:.0f} MB ({s['loaded_rss_mb']:.0f} MB of it torch, Keras and "
          f"the bundle before the first row); {s['rows_per_s'] / r['rows_per_s']:.2f}x the "
          f"read-only rate, {s['seconds']:.1f}s for {s['rows']:,} rows")
    return res


def bench_tuning(rows: int, trials: int, workdir: Path) -> dict:
    """A fresh random search of ``trials`` MLP trials on ``rows`` stored embeddings (128-d),
    timed end to end (split, search, refit of the best), against one default MLP fit on the
    same split, the baseline measured in the same run."""
    import shutil

    from faceprobe.heads.synthetic import write_synthetic_store
    from faceprobe.heads.train import train_store
    from faceprobe.heads.tune import tune_store

    store = write_synthetic_store(workdir / f"tune-store-{rows}", rows, 128,
                                  backbone="bench.synthetic")
    t0 = time.perf_counter()
    train_store(store, TASKS, "mlp")
    one = time.perf_counter() - t0
    d = workdir / "tune-dir"
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    res = tune_store(store, TASKS, head="mlp", tuner="random", trials=trials, directory=d)
    secs = time.perf_counter() - t0
    print(f"tune {trials} MLP trials on {rows:,} rows: {secs:.0f}s ({secs / 60:.1f} min), "
          f"{secs / one:.1f}x one default MLP fit ({one:.1f}s); best score {res.best_score:.4f}",
          flush=True)
    return {"rows": rows, "trials": trials, "seconds": secs, "one_fit_seconds": one}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="training rows, comma-separated")
    ap.add_argument("--dims", default="128,512", help="embedding dims, comma-separated")
    ap.add_argument("--heads", default=",".join(ALL_HEADS), help="heads to time")
    ap.add_argument("--max-kernel-rows", type=int, default=20000,
                    help="skip RBF SVM and k-NN above this many rows")
    ap.add_argument("--score-rows", type=int, default=1_000_000, help="rows of the scoring store")
    ap.add_argument("--shard-size", type=int, default=10000, help="rows per store shard")
    ap.add_argument("--workdir", default="/tmp/faceprobe-bench-heads", help="cache directory")
    ap.add_argument("--skip-training", action="store_true", help="only benchmark scoring")
    ap.add_argument("--skip-scoring", action="store_true", help="only benchmark training")
    ap.add_argument("--tune-trials", type=int, default=20, help="trials of the timed search")
    ap.add_argument("--tune-rows", type=int, default=10000, help="rows of the timed search")
    ap.add_argument("--skip-tuning", action="store_true", help="do not time a search")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_training:
        bench_training([int(s) for s in args.sizes.split(",")],
                       [int(d) for d in args.dims.split(",")],
                       [h.strip() for h in args.heads.split(",")], args.max_kernel_rows)
    if not args.skip_scoring:
        bench_scoring(args.score_rows, workdir, args.shard_size)
    if not args.skip_tuning:
        bench_tuning(args.tune_rows, args.tune_trials, workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
