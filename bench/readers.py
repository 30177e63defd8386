"""Benchmark: CelebA label parsing at full-dataset scale, against naive baselines.

Writes N CelebA-format lines (``list_attr_celeba.txt`` with CRLF and the original's padded
``-1/ 1`` columns, ``identity_CelebA.txt``, ``list_eval_partition.txt``) to a temp dir, then times
in the same run:
- faceprobe ``CelebAReader(images=False).read_labels()`` (parse + validate only),
- faceprobe ``records()`` fully consumed (parse + build every FaceRecord),
- a naive pure-Python loop (split, int() per value, dicts) over the same three files,
- ``np.loadtxt`` of the attribute matrix alone.
Prints seconds per 10k lines and the ratio to each baseline. Target: well under 1 s / 10k lines.

    python bench/readers.py [--lines 200000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from faceprobe.data.celeba import ATTRIBUTES, CelebAReader  # noqa: E402


def write_celeba(root: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    with open(os.path.join(root, "list_attr_celeba.txt"), "w", newline="") as fh:
        fh.write(f"{n}\r\n" + " ".join(ATTRIBUTES) + " \r\n")
        for name in names:
            fh.write(name + " " + " ".join(rng.choice(("-1", " 1")) for _ in ATTRIBUTES) + "\r\n")
    with open(os.path.join(root, "identity_CelebA.txt"), "w", newline="") as fh:
        fh.writelines(f"{name} {rng.randint(1, 10177)}\r\n" for name in names)
    with open(os.path.join(root, "list_eval_partition.txt"), "w", newline="") as fh:
        fh.writelines(f"{name} {rng.choice('0000000012')}\r\n" for name in names)


def naive(root: str) -> int:
    """What a first implementation does: per-line split, int() per value, nested dicts."""
    rows = {}
    with open(os.path.join(root, "list_attr_celeba.txt")) as fh:
        fh.readline()
        attrs = fh.readline().split()
        for line in fh:
            parts = line.split()
            rows[parts[0]] = {"labels": {a: int(v) for a, v in zip(attrs, parts[1:], strict=True)}}
    for fname, key in (("identity_CelebA.txt", "identity"), ("list_eval_partition.txt", "split")):
        with open(os.path.join(root, fname)) as fh:
            for line in fh:
                name, value = line.split()
                rows[name][key] = int(value)
    return len(rows)


def loadtxt(root: str) -> int:
    values = np.loadtxt(os.path.join(root, "list_attr_celeba.txt"), skiprows=2,
                        usecols=range(1, len(ATTRIBUTES) + 1), dtype=np.int8)
    return len(values)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(n_lines: int = 200_000, repeat: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as root:
        write_celeba(root, n_lines)
        reader = CelebAReader(root, images=False)

        def parse():
            reader.problems = {}
            assert len(reader.read_labels()["attr"]) == n_lines

        def records():
            assert sum(1 for _ in reader.records()) == n_lines

        def base_naive():
            assert naive(root) == n_lines

        def base_loadtxt():
            assert loadtxt(root) == n_lines

        seconds = {
            "faceprobe_parse": best_of(parse, repeat),
            "faceprobe_records": best_of(records, repeat),
            "naive_python": best_of(base_naive, repeat),
            "np_loadtxt_attr_only": best_of(base_loadtxt, repeat),
        }
        assert reader.problems == {}
    per_10k = {k: v / n_lines * 10_000 for k, v in seconds.items()}
    return {"lines": n_lines, "seconds": seconds, "seconds_per_10k_lines": per_10k,
            "ratio_parse_vs_naive": seconds["faceprobe_parse"] / seconds["naive_python"],
            "ratio_records_vs_naive": seconds["faceprobe_records"] / seconds["naive_python"],
            "ratio_parse_vs_loadtxt": seconds["faceprobe_parse"] / seconds["np_loadtxt_attr_only"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time CelebA label parsing against baselines.")
    parser.add_argument("--lines", type=int, default=200_000, help="attribute lines to generate")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method (best kept)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    result = run(args.lines, args.repeat)
    print(f"CelebA label files, {result['lines']:,} lines (best of {args.repeat}):")
    for name, value in result["seconds_per_10k_lines"].items():
        print(f"  {name:<22} {result['seconds'][name]:7.3f} s total  {value:.4f} s / 10k lines")
    print(f"  ratio parse / naive python   {result['ratio_parse_vs_naive']:.2f}")
    print(f"  ratio records / naive python {result['ratio_records_vs_naive']:.2f}")
    print(f"  ratio parse / np.loadtxt     {result['ratio_parse_vs_loadtxt']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
