"""Benchmark `faceprobe store export|import`: rows/s and peak memory, against h5py alone.

    python bench/exchange.py                    # 1,000,000 rows x 512-d
    python bench/exchange.py --rows 200000      # quicker

Writes a synthetic store of --rows rows (random float32 embeddings, gender/race/age labels,
10,000-row shards; cached in --workdir), then runs each step in a fresh subprocess and reports
its wall time, rows/s and peak RSS (ru_maxrss of that child, from os.wait4, so each number is
the step's own):

- h5py:      read every shard's embedding matrix with h5py alone (the floor for any export)
- export:    Store -> Parquet (faceprobe.embed.exchange.export_store, streamed per shard)
- read:      pyarrow.parquet iter_batches over the export, embedding column to numpy
- import:    Parquet -> a new store (import_file, streamed, two passes)

Target: export of 1M x 512 under 1.5 GB peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MAKE = """
import numpy as np, sys
from faceprobe.data.vocab import DEFAULT_VOCABULARIES
from faceprobe.embed.store import StoreWriter
n, dim, size, path = int(sys.argv[1]), int(sys.argv[2]), 10000, sys.argv[3]
vocab = {t: DEFAULT_VOCABULARIES[t] for t in ("gender", "race", "age")}
meta = {"backbone": "bench.synthetic", "features": {"embedding": dim}, "vocabularies": vocab,
        "shard_size": size, "weights_sha256": "synthetic", "records_sha256": f"bench-{n}",
        "num_shards": (n + size - 1) // size, "num_records": n, "dataset": "synthetic"}
rng = np.random.default_rng(0)
with StoreWriter.open(path, meta, overwrite=True) as w:
    for s in range(meta["num_shards"]):
        lo, hi = s * size, min(n, (s + 1) * size)
        X = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        g, r, a = rng.integers(0, 2, hi - lo), rng.integers(0, 5, hi - lo), rng.uniform(1, 90, hi - lo)
        w.write_shard(s, [{"path": f"/bench/{i // 7}/{i}.jpg", "status": "ok", "identity": f"p{i // 7}",
                           "labels": {"gender": vocab["gender"][g[k]], "race": vocab["race"][r[k]],
                                      "age": float(a[k])}, "features": {"embedding": X[k]}}
                          for k, i in enumerate(range(lo, hi))])
"""

H5 = """
import h5py, numpy as np, sys
from faceprobe.embed.store import Store, shard_name
s = Store(sys.argv[1]); total = 0.0; rows = 0
for i in s.shards():
    with h5py.File(s.path / shard_name(i), "r") as f:
        X = f["features/embedding"][...]
        total += float(X[:, 0].sum()); rows += len(X)
print(rows)
"""

EXPORT = """
import sys
from faceprobe.embed.exchange import export_store
print(export_store(sys.argv[1], sys.argv[2])["rows"])
"""

READ = """
import numpy as np, sys, pyarrow.parquet as pq
from faceprobe.embed.exchange import _matrix, parquet_batch
rows = 0
pf = pq.ParquetFile(sys.argv[1], pre_buffer=False)
for b in pf.iter_batches(parquet_batch(pf), columns=["embedding"]):
    X, ok, _ = _matrix(b.column(0)); rows += int(ok.sum())
print(rows)
"""

IMPORT = """
import sys
from faceprobe.embed.exchange import import_file
print(import_file(sys.argv[1], sys.argv[2], overwrite=True)["rows"])
"""


def run_measured(code: str, *args: str) -> dict:
    """One step in a child whose own ru_maxrss is read by wait4 (not the children's maximum)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "torch"}
    r, w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.execve(sys.executable, [sys.executable, "-c", code, *args], env)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status, usage = os.wait4(pid, 0)
    secs = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"step failed (exit {os.waitstatus_to_exitcode(status)})")
    return {"seconds": secs, "rows": int(out.strip().splitlines()[-1]),
            "peak_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--workdir", default="/tmp/faceprobe-bench-exchange")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store = work / f"store-{args.rows}-{args.dim}"
    if not (store / "manifest.json").exists() or len(list(store.glob("*.stats.json"))) < (
            args.rows + 9999) // 10000:
        print(f"writing a {args.rows:,} x {args.dim} store ...", flush=True)
        run_measured(MAKE + "\nprint(n)", str(args.rows), str(args.dim), str(store))
    parquet, back = work / f"export-{args.rows}.parquet", work / f"import-{args.rows}"
    results = {}
    for name, code, a in (("h5py read", H5, (str(store),)),
                          ("export", EXPORT, (str(store), str(parquet))),
                          ("parquet read", READ, (str(parquet),)),
                          ("import", IMPORT, (str(parquet), str(back)))):
        res = run_measured(code, *a)
        res["rows_per_s"] = res["rows"] / res["seconds"]
        results[name] = res
        print(f"{name:13s} {res['rows']:>9,} rows  {res['seconds']:7.1f} s  "
              f"{res['rows_per_s']:>10,.0f} rows/s  peak {res['peak_mb']:7.0f} MB", flush=True)
    results["parquet_mb"] = parquet.stat().st_size / 2**20
    print(f"export file {results['parquet_mb']:.0f} MB; export/h5py time "
          f"{results['export']['seconds'] / results['h5py read']['seconds']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(back, ignore_errors=True)


if __name__ == "__main__":
    main()
