"""``inspect_dataset``: counts, label distributions and every problem, found without stopping.

Decisions:
- Records are streamed (never all kept): per record only the path, split and a hash of its
  labels are remembered, so a 200k-row CelebA inspects in bounded memory.
- ``images`` is the number of records whose file is on disk; ``records`` counts rows.
- Every file is read once: sha1 of the bytes (duplicates), PIL ``open().verify()`` on those bytes
  (``unreadable``), and a JPEG that does not end with the EOI marker is ``truncated`` (verify()
  does not decode JPEG data, and truncation is the common defect). Threads overlap the reads.
- Duplicate groups are byte-identical files under different paths. A group is ``conflicting``
  when its records' labels differ and ``cross_split`` when they sit in different splits
  (train/test leakage).
- Ages are summarised (count/min/max/mean) and counted as ``age_group`` bins, never per year.
- ``problem_counts`` adds up entries, using an entry's ``count`` where a reader aggregated
  (CelebA's listed-but-absent images).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faceprobe.data.registry import get_reader
from faceprobe.data.vocab import AGE, age_group

_CHUNK = 128
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def _check_file(path: str, verify: bool) -> tuple[str | None, str | None, str | None]:
    """(sha1, problem kind, message) for one image file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, "missing_file", "not on disk"
    except OSError as exc:
        return None, "unreadable", f"cannot read: {exc.strerror or exc}"
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        return digest, "unreadable", "empty file"
    if verify:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception as exc:  # PIL raises many types for bad bytes; all mean "unreadable"
            return digest, "unreadable", f"not a readable image ({type(exc).__name__}: {exc})"[:200]
        if data.startswith(_JPEG_SOI) and not data.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI):
            return digest, "truncated", "JPEG without end marker (truncated download?)"
    return digest, None, None


def _check_chunk(paths: list[str], verify: bool) -> list[tuple[str | None, str | None, str | None]]:
    return [_check_file(p, verify) for p in paths]


def check_files(paths: list[str], verify: bool = True, progress: bool | None = None,
                workers: int | None = None) -> list[tuple[str | None, str | None, str | None]]:
    """``_check_file`` for every path, in order, with a tqdm bar on stderr."""
    from tqdm import tqdm

    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    workers = workers or min(8, os.cpu_count() or 1)
    out: list = []
    with tqdm(total=len(paths), desc="hashing images", unit="img", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_check_chunk, chunks, [verify] * len(chunks)):
                out.extend(result)
                bar.update(len(result))
    return out


def _problem_count(entries: list[dict]) -> int:
    return sum(int(e.get("count", 1)) for e in entries)


def inspect_dataset(name: str, root: str | os.PathLike, strict: bool = False, *,
                    check_images: bool = True, verify: bool = True,
                    progress: bool | None = None, **options: Any) -> dict[str, Any]:
    """Summary of a dataset: ``records``, ``images``, ``labels`` (task -> value -> count),
    ``age``, ``splits``, ``identities``, ``landmarks``, ``problems`` (kind -> list),
    ``problem_counts``, ``duplicates`` (groups of byte-identical files), ``duplicate_groups``,
    ``conflicting_groups``.

    ``check_images=False`` skips reading the image files (no duplicates/unreadable checks; file
    presence from directory listings). ``strict`` is passed to the reader.
    """
    reader = get_reader(name, root, strict=strict, **options)
    counts: dict[str, Counter] = defaultdict(Counter)
    splits: Counter = Counter()
    identities: set[str] = set()
    ages: list[float] = []
    paths: list[str] = []
    seen: dict[str, int] = {}
    fingerprints: list[int] = []
    split_of: list[str | None] = []
    n_landmarks = 0
    n_records = 0
    for record in reader.records():
        n_records += 1
        labels = record.labels
        for task, value in labels.items():
            if task == AGE:
                ages.append(value)
            else:
                counts[task][value] += 1
        if AGE in labels and "age_group" not in labels:
            counts["age_group"][age_group(labels[AGE])] += 1
        splits[record.split or "none"] += 1
        if record.identity is not None:
            identities.add(record.identity)
        if record.landmarks is not None:
            n_landmarks += 1
        if record.path not in seen:
            seen[record.path] = len(paths)
            paths.append(record.path)
            fingerprints.append(hash(tuple(sorted(labels.items(), key=lambda kv: kv[0]))))
            split_of.append(record.split)

    problems: dict[str, list[dict]] = {k: list(v) for k, v in reader.problems.items()}
    reported_missing = {p.get("path") for p in problems.get("missing_file", [])}
    duplicates: list[dict] = []
    if check_images:
        results = check_files(paths, verify=verify, progress=progress)
        by_hash: dict[str, list[int]] = defaultdict(list)
        n_images = 0
        for i, (digest, kind, message) in enumerate(results):
            if kind != "missing_file":
                n_images += 1
            if digest is not None:
                by_hash[digest].append(i)
            if kind is not None and not (kind == "missing_file" and paths[i] in reported_missing):
                problems.setdefault(kind, []).append({"kind": kind, "path": paths[i],
                                                      "message": message})
        for digest, members in by_hash.items():
            if len(members) > 1:
                duplicates.append({
                    "sha1": digest,
                    "paths": [paths[i] for i in members],
                    "conflicting": len({fingerprints[i] for i in members}) > 1,
                    "cross_split": len({split_of[i] for i in members}) > 1,
                })
        duplicates.sort(key=lambda g: g["paths"][0])
    else:
        listings: dict[str, frozenset[str]] = {}
        n_images = 0
        for path in paths:
            directory, base = os.path.split(path)
            if directory not in listings:
                try:
                    listings[directory] = frozenset(os.listdir(directory))
                except (OSError, ValueError):
                    listings[directory] = frozenset()
            n_images += base in listings[directory]

    vocab = reader.vocabularies()
    labels_out: dict[str, dict[str, int]] = {}
    task_order = [t for t in reader.tasks if t in counts]
    task_order += sorted(t for t in counts if t not in task_order)
    for task in task_order:
        order = vocab.get(task) or []
        counter = counts[task]
        labels_out[task] = {str(v): counter[v] for v in order if v in counter}
        labels_out[task].update((str(v), c) for v, c in counter.most_common() if v not in order)
    result: dict[str, Any] = {
        "dataset": reader.name,
        "root": reader.root,
        "records": n_records,
        "images": n_images,
        "tasks": list(reader.tasks),
        "labels": labels_out,
        "splits": dict(sorted(splits.items())),
        "identities": len(identities),
        "landmarks": n_landmarks,
        "problems": problems,
        "problem_counts": {k: _problem_count(v) for k, v in sorted(problems.items())},
        "duplicates": duplicates,
        "duplicate_groups": len(duplicates),
        "conflicting_groups": sum(g["conflicting"] for g in duplicates),
        "cross_split_groups": sum(g["cross_split"] for g in duplicates),
    }
    if ages:
        result["age"] = {"count": len(ages), "min": min(ages), "max": max(ages),
                         "mean": round(sum(ages) / len(ages), 2)}
    return result


def format_summary(result: dict[str, Any], examples: int = 3) -> str:
    """A human-readable report of ``inspect_dataset``'s result."""
    lines = [f"{result['dataset']} at {result['root']}",
             f"  images: {result['images']:,} on disk ({result['records']:,} records)"]
    if result["identities"]:
        lines.append(f"  identities: {result['identities']:,}")
    if result["landmarks"]:
        lines.append(f"  with landmarks: {result['landmarks']:,}")
    lines.append("  splits: " + ", ".join(f"{k} {v:,}" for k, v in result["splits"].items()))
    if "age" in result:
        a = result["age"]
        lines.append(f"  age: {a['count']:,} labelled, {a['min']:g}..{a['max']:g} years, "
                     f"mean {a['mean']:g}")
    if result["labels"]:
        lines.append("labels:")
        for task, values in result["labels"].items():
            lines.append(f"  {task}: " + ", ".join(f"{v} {c:,}" for v, c in values.items()))
    n_dup = result["duplicate_groups"]
    if not result["problem_counts"] and not n_dup:
        lines.append("problems: none")
        return "\n".join(lines)
    lines.append("problems:")
    for kind, n in result["problem_counts"].items():
        lines.append(f"  {kind}: {n:,}")
        for entry in result["problems"][kind][:examples]:
            where = entry.get("path") or entry.get("file") or ""
            if entry.get("line"):
                where = f"{entry.get('file', where)}:{entry['line']}"
            lines.append(f"    {where}: {entry.get('message', '')}")
    if n_dup:
        lines.append(f"  duplicate images: {n_dup:,} groups of byte-identical files, "
                     f"{result['conflicting_groups']:,} with conflicting labels, "
                     f"{result['cross_split_groups']:,} across splits")
        for group in result["duplicates"][:examples]:
            flag = " (labels differ)" if group["conflicting"] else ""
            lines.append("    " + " = ".join(os.path.basename(p) for p in group["paths"]) + flag)
    return "\n".join(lines)
