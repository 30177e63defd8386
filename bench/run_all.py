"""`make bench`: every cost as a ratio against what a user would otherwise run, in one run.

    python bench/run_all.py [--quick] [--embed-base 8] [--rows-base 1000] [--io-base 20000]

Sections, each at 1x, 4x and 16x its base size:
- embedding throughput: faceprobe's local engine vs the Ray engine on this machine vs the
  facenet-pytorch README loop (bench/embed.py's functions), same LFW images, same seeded random
  InceptionResnetV1 weights, same thread budget;
- head training time: the Keras MLP head vs each scikit-learn baseline (bench/heads.py's
  ``bench_training``) on synthetic embeddings with real signal;
- scoring: rows/s and peak RSS of ``score_store`` vs only reading the same store
  (bench/heads.py's child script, one fresh process each so the peak is its own);
- store I/O: StoreWriter / Store.load MB/s vs ``np.save`` / ``np.load`` of the same arrays.

Decisions:
- Only ratios measured in the same run are compared: the machine is shared and its load varies,
  so absolute times from another run are not comparable, and each table row pairs measurements
  taken back to back. The absolute numbers and the load average are in the JSON anyway.
- Growth is reported as cost(4x)/cost(1x) and cost(16x)/cost(1x): 4 and 16 mean linear; less
  means fixed costs (Ray start-up, model loading) being amortised, more means superlinear.
- The Ray engine is timed cold, as `faceprobe embed --engine ray` runs: starting the one-machine
  Ray and the actors is part of its cost. Its start-up alone is measured too.
- Sizes are chosen so the whole run stays under 15 minutes on 2 cores;
  ``--quick`` shrinks every section for a smoke run. Under load from other jobs the
  embedding section dominates (the README loop is the slowest method); the load average at the
  start and end is recorded with the results. Embedding images come from
  ../shared/data/lfw when present, else the 15 committed fixture images repeated.
- RBF SVM and k-NN are timed only up to --max-kernel-rows (their cost grows with n^2).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("KERAS_BACKEND", "torch")

SCALES = (1, 4, 16)
BASELINES = ("logreg", "linsvm", "ridge", "hgb", "knn", "svm")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- embedding ------------------------------------------------------------------------------

def _image_paths(n: int, bench_embed) -> list[str]:
    root = bench_embed.SHARED / "lfw" / "lfw-deepfunneled"
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    if len(paths) < n:
        fixture = sorted(str(p) for p in (REPO / "tests" / "data" / "lfw").rglob("*.jpg"))
        # repeats are fine for throughput: every image is decoded and detected again
        paths = (paths or fixture) * (n // max(1, len(paths or fixture)) + 1)
    return paths[:n]


def ray_run(paths, threads: int, batch_size: int, shard_size: int):
    from faceprobe.data.records import FaceRecord
    from faceprobe.embed.distributed import embed_dataset_ray
    from faceprobe.embed.store import Store

    recs = [FaceRecord(path=p, dataset="lfw") for p in paths]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        summary = embed_dataset_ray(recs, Path(d) / "s", "facenet.vggface2", weights="random",
                                    shard_size=shard_size, batch_size=batch_size,
                                    actors=threads, num_cpus=threads, show_progress=False)
        seconds = time.perf_counter() - t0
        data = Store(Path(d) / "s").load()
    return dict(zip(data.path.tolist(), data.X["embedding"], strict=True)), seconds, summary


def ray_startup(threads: int) -> float:
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=threads, include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level="warning")
    ray.get(ray.remote(lambda: 1).remote())
    ray.shutdown()
    return time.perf_counter() - t0


def bench_embedding(base: int, threads: int, shard_size: int, batch_size: int) -> dict:
    import torch

    from faceprobe.embed.backbones import create_backbone

    be = _load("embed")
    sd = create_backbone("facenet.vggface2", weights="random", device="cpu").model.state_dict()
    sd = {k: v.contiguous() for k, v in sd.items()}
    rows = []
    for k in SCALES:
        paths = _image_paths(base * k, be)
        n = len(paths)
        log(f"embedding {n} images: local engine")
        local, t_local, _, _ = be.faceprobe_run(paths, "fp32", threads, threads, batch_size,
                                                shard_size=shard_size)
        log(f"embedding {n} images: ray engine")
        ray_e, t_ray, _ = ray_run(paths, threads, batch_size, shard_size)
        log(f"embedding {n} images: facenet-pytorch README loop")
        _, t_readme = be.readme_loop(paths, sd, threads)
        common = [p for p in local if p in ray_e]
        diff = float(max((np.abs(local[p] - ray_e[p]).max() for p in common), default=0.0))
        rows.append({"images": n, "local_s": t_local, "ray_s": t_ray, "readme_s": t_readme,
                     "local_img_s": n / t_local, "ray_img_s": n / t_ray,
                     "readme_img_s": n / t_readme, "local_vs_readme": t_readme / t_local,
                     "ray_vs_readme": t_readme / t_ray, "ray_vs_local": t_local / t_ray,
                     "ray_vs_local_max_abs_diff": diff})
    log("ray start-up alone")
    return {"threads": threads, "torch": torch.__version__, "shard_size": shard_size,
            "ray_startup_s": ray_startup(threads), "sizes": rows}


# --- heads ----------------------------------------------------------------------------------

def bench_training(base: int, dim: int, max_kernel_rows: int) -> dict:
    from faceprobe.heads.baselines import make_head
    from faceprobe.heads.synthetic import synthetic_arrays

    bh = _load("heads")
    # one untimed fit first: Keras/torch initialise on the first fit, which is not a per-size cost
    a = synthetic_arrays(200, dim, seed=1)
    make_head("mlp", tasks=bh.TASKS, epochs=2).fit(({"embedding": a["X"]},
                                                    {t: a[t] for t in bh.TASKS}))
    results = bh.bench_training([base * k for k in SCALES], [dim], ["mlp", *BASELINES],
                                max_kernel_rows)
    rows = []
    for k in SCALES:
        at = {r["head"]: r for r in results if r["rows"] == base * k}
        mlp = at["mlp"]["fit_s"]
        rows.append({"rows": base * k, "mlp_s": mlp,
                     **{f"{h}_s": at[h]["fit_s"] if h in at else None for h in BASELINES},
                     **{f"mlp_vs_{h}": mlp / at[h]["fit_s"] if h in at else None
                        for h in BASELINES}})
    return {"dim": dim, "max_kernel_rows": max_kernel_rows, "sizes": rows, "raw": results}


# --- store I/O and scoring ------------------------------------------------------------------

def _rows(a: dict, vocab: dict, lo: int, hi: int) -> list[dict]:
    return [{"path": f"/synthetic/{int(a['identity'][i])}/{i}.jpg", "dataset": "synthetic",
             "identity": f"p{int(a['identity'][i])}", "status": "ok", "error": "",
             "labels": {"gender": vocab["gender"][a["gender"][i]],
                        "race": vocab["race"][a["race"][i]], "age": float(a["age"][i])},
             "features": {"embedding": a["X"][i]}} for i in range(lo, hi)]


def write_store(path: Path, n: int, dim: int, shard_size: int) -> tuple[float, int]:
    """A synthetic store written shard by shard; returns (seconds spent in the writer, bytes)."""
    from faceprobe.data.vocab import DEFAULT_VOCABULARIES
    from faceprobe.embed.store import StoreWriter
    from faceprobe.heads.synthetic import synthetic_arrays

    a = synthetic_arrays(n, dim, seed=0)
    vocab = {t: DEFAULT_VOCABULARIES[t] for t in ("gender", "race", "age")}
    shards = (n + shard_size - 1) // shard_size
    meta = {"backbone": "bench.synthetic", "features": {"embedding": dim},
            "vocabularies": vocab, "shard_size": shard_size, "weights_sha256": "synthetic",
            "alignment": "none", "precision": "fp32", "records_sha256": f"synthetic-{n}",
            "num_shards": shards, "num_records": n, "dataset": "synthetic"}
    secs = 0.0
    with StoreWriter.open(path, meta, overwrite=True) as w:
        for s in range(shards):
            rows = _rows(a, vocab, s * shard_size, min(n, (s + 1) * shard_size))  # untimed
            t0 = time.perf_counter()
            w.write_shard(s, rows)
            secs += time.perf_counter() - t0
    return secs, sum(p.stat().st_size for p in path.glob("shard-*"))


def bench_store_and_scoring(base: int, dim: int, shard_size: int, workdir: Path) -> dict:
    from faceprobe.embed.store import Store
    from faceprobe.heads.synthetic import synthetic_arrays, write_synthetic_store
    from faceprobe.heads.train import train_store

    bh = _load("heads")
    log("training the MLP bundle used for scoring")
    small = write_synthetic_store(workdir / "train-store", 10000, dim, backbone="bench.synthetic")
    bundle = workdir / "bundle-mlp"
    train_store(small, bh.TASKS, "mlp", out=bundle, overwrite=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    io_rows, score_rows = [], []
    for k in SCALES:
        n = base * k
        store = workdir / f"store-{n}"
        log(f"store I/O and scoring, {n} rows")
        w_s, nbytes = write_store(store, n, dim, shard_size)
        payload = n * dim * 4 / 1e6  # MB of float32 embeddings, the same for both sides
        t0 = time.perf_counter()
        d = Store(store).load(usable_only=False)
        r_s = time.perf_counter() - t0
        assert len(d) == n
        a = synthetic_arrays(n, dim, seed=0)
        npy = workdir / "baseline.npz"
        t0 = time.perf_counter()
        np.savez(npy, X=a["X"], gender=a["gender"], race=a["race"], age=a["age"])
        with open(npy, "rb") as f:
            os.fsync(f.fileno())  # the store fsyncs every shard; so must its baseline
        wn_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with np.load(npy) as z:
            _ = {key: z[key] for key in z.files}
        rn_s = time.perf_counter() - t0
        io_rows.append({"rows": n, "payload_mb": payload, "store_mb": nbytes / 1e6,
                        "write_s": w_s, "read_s": r_s, "npz_write_s": wn_s, "npz_read_s": rn_s,
                        "write_mb_s": payload / w_s, "read_mb_s": payload / r_s,
                        "npz_write_mb_s": payload / wn_s, "npz_read_mb_s": payload / rn_s,
                        "write_vs_npz": wn_s / w_s, "read_vs_npz": rn_s / r_s})
        res = {}
        for mode in ("read", "score"):
            out = subprocess.run([sys.executable, "-c", bh._CHILD, mode, str(store), str(bundle),
                                  str(workdir / "preds.csv")], capture_output=True, text=True,
                                 env=env, check=True)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r, s = res["read"], res["score"]
        score_rows.append({"rows": n, "read_rows_s": r["rows_per_s"],
                           "score_rows_s": s["rows_per_s"], "read_peak_mb": r["maxrss_mb"],
                           "score_peak_mb": s["maxrss_mb"], "score_s": s["seconds"],
                           "score_vs_read": s["rows_per_s"] / r["rows_per_s"],
                           "peak_vs_read": s["maxrss_mb"] / r["maxrss_mb"]})
    return {"dim": dim, "shard_size": shard_size, "io": io_rows, "scoring": score_rows}


# --- report ---------------------------------------------------------------------------------

def _growth(rows: list[dict], key: str) -> str:
    vals = [r.get(key) for r in rows]
    if vals[0] is None or not vals[0] or any(v is None for v in vals):
        return "n/a"
    return " / ".join(f"{v / vals[0]:.1f}" for v in vals[1:])


def _ratios(rows: list[dict], key: str, fmt: str = "{:.2f}") -> str:
    return "  ".join("-" if r.get(key) is None else fmt.format(r[key]) for r in rows)


def table(res: dict) -> str:
    out = []
    sizes = "1x 4x 16x"

    def line(what, ratios, growth):
        out.append(f"{what:<44} {ratios:<28} {growth}")

    line("measure (ratio as named)", f"ratio at {sizes}", "growth 4x / 16x (linear: 4 / 16)")
    out.append("-" * 96)
    if "embedding" in res:
        e = res["embedding"]["sizes"]
        out.append(f"embedding, images {', '.join(str(r['images']) for r in e)} "
                   f"({res['embedding']['threads']} threads; ray start-up "
                   f"{res['embedding']['ray_startup_s']:.1f}s)")
        line("  local engine speed-up over README loop", _ratios(e, "local_vs_readme"),
             f"local {_growth(e, 'local_s')}")
        line("  ray engine speed-up over README loop", _ratios(e, "ray_vs_readme"),
             f"ray {_growth(e, 'ray_s')}")
        line("  ray engine speed-up over local engine", _ratios(e, "ray_vs_local"),
             f"readme {_growth(e, 'readme_s')}")
        line("  images/s local | ray | README",
             "  ".join(f"{r['local_img_s']:.1f}|{r['ray_img_s']:.1f}|{r['readme_img_s']:.1f}"
                       for r in e), "")
    if "training" in res:
        t = res["training"]["sizes"]
        out.append(f"head training, rows {', '.join(str(r['rows']) for r in t)} "
                   f"(dim {res['training']['dim']})")
        line("  mlp fit seconds", _ratios(t, "mlp_s", "{:.1f}"), f"mlp {_growth(t, 'mlp_s')}")
        for h in BASELINES:
            line(f"  mlp fit time / {h} fit time", _ratios(t, f"mlp_vs_{h}"),
                 f"{h} {_growth(t, f'{h}_s')}")
    if "store" in res:
        io, sc = res["store"]["io"], res["store"]["scoring"]
        out.append(f"store I/O and scoring, rows {', '.join(str(r['rows']) for r in io)} "
                   f"(dim {res['store']['dim']})")
        line("  store write MB/s / np.savez MB/s", _ratios(io, "write_vs_npz"),
             f"write {_growth(io, 'write_s')}")
        line("  store read MB/s / np.load MB/s", _ratios(io, "read_vs_npz"),
             f"read {_growth(io, 'read_s')}")
        line("  store write | read MB/s",
             "  ".join(f"{r['write_mb_s']:.0f}|{r['read_mb_s']:.0f}" for r in io), "")
        line("  scoring rows/s / read-only rows/s", _ratios(sc, "score_vs_read"),
             f"score {_growth(sc, 'score_s')}")
        line("  scoring peak RSS / read-only peak RSS", _ratios(sc, "peak_vs_read"),
             f"peak {_growth(sc, 'score_peak_mb')}")
        line("  scoring rows/s | peak MB",
             "  ".join(f"{r['score_rows_s']:,.0f}|{r['score_peak_mb']:.0f}" for r in sc), "")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the suite")
    ap.add_argument("--embed-base", type=int, default=8, help="images at 1x (default 8)")
    ap.add_argument("--rows-base", type=int, default=1000, help="training rows at 1x")
    ap.add_argument("--io-base", type=int, default=20000, help="store/scoring rows at 1x")
    ap.add_argument("--dim", type=int, default=128, help="embedding dimension of synthetic rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads / processes / actors every embedding method gets")
    ap.add_argument("--max-kernel-rows", type=int, default=4000,
                    help="skip RBF SVM and k-NN above this many training rows")
    ap.add_argument("--skip", default="", help="comma-separated: embedding,training,store")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"),
                    help="directory for the JSON results")
    args = ap.parse_args(argv)
    if args.quick:
        args.embed_base, args.rows_base, args.io_base = 4, 200, 2000
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.perf_counter()
    res: dict = {"created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                 "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                             "python": platform.python_version(), "platform": platform.platform()},
                 "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="faceprobe-bench-") as tmp:
        if "embedding" not in skip:
            res["embedding"] = bench_embedding(args.embed_base, args.threads,
                                               shard_size=max(4, args.embed_base // 2),
                                               batch_size=32)
        if "training" not in skip:
            res["training"] = bench_training(args.rows_base, args.dim, args.max_kernel_rows)
        if "store" not in skip:
            res["store"] = bench_store_and_scoring(args.io_base, args.dim, 10000 if
                                                   args.io_base >= 10000 else args.io_base,
                                                   Path(tmp))
    res["seconds"] = time.perf_counter() - started
    res["machine"]["load_avg_end"] = os.getloadavg()
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (_dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    out.write_text(json.dumps(res, indent=1, default=float))
    print()
    print(table(res))
    print(f"\n{res['seconds']:.0f}s in all on {os.cpu_count()} CPUs (load average "
          f"{res['machine']['load_avg_start'][0]:.1f} -> {res['machine']['load_avg_end'][0]:.1f});"
          f" results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
