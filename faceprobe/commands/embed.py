"""``faceprobe embed`` (a dataset into a store) and ``faceprobe store info|verify|export|import``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    from faceprobe.embed.distributed import add_engine_arguments

    p = subparsers.add_parser(
        "embed", help="detect, align and embed every image of a dataset into a store",
        description="Detect faces (SCRFD when its file is here, else MTCNN: --detector), align "
                    "them and embed them with a backbone, writing HDF5 shards. Re-running the "
                    "same command resumes where a run stopped.")
    p.add_argument("dataset", help="dataset format (see `faceprobe datasets`), e.g. lfw, utkface")
    p.add_argument("--root", required=True, help="the dataset's directory")
    p.add_argument("--out", required=True, help="store directory to create or resume")
    p.add_argument("--backbone", required=True,
                   help="backbone name(s), comma-separated: dlib.resnet, arcface.mobilefacenet, "
                        "arcface.mobilefacenet-paddle, arcface.onnx, facenet.vggface2, "
                        "facenet.casia-webface; with several (e.g. dlib.resnet,arcface."
                        "mobilefacenet) one detection pass feeds them all: the first gives the "
                        "'embedding' group, each further one a group named after it")
    p.add_argument("--weights", default=None,
                   help="weights file (one per backbone, comma-separated, in --backbone order; "
                        "empty = default); 'random' for seeded random weights (FaceNet, tests "
                        "only); default: the backbone's file from $FACEPROBE_HOME/weights, "
                        "torch's cache or its download URL. With --add-features: the files of "
                        "the backbones being added")
    p.add_argument("--batch-size", type=int, default=64, help="faces per backbone call (default 64)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where models run; auto = cuda when available")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="backbone precision: bf16 uses AMX on recent CPUs, fp16 needs CUDA")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that decode, detect and align (default: CPU count; 0 = inline)")
    p.add_argument("--limit", type=int, default=None, help="embed only the first N records")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="records per shard: the unit of resume (default 1000)")
    p.add_argument("--multi-face", default="central", choices=("largest", "central", "all"),
                   help="several faces: the most central of the large ones (default; every "
                        "supported dataset centres its subject), the largest, or all (one row each)")
    p.add_argument("--no-face", default="skip", choices=("skip", "whole_image"),
                   help="no face found: a no_face row, or embed the whole (pre-cropped) image")
    p.add_argument("--min-face-size", type=float, default=None,
                   help="smallest face in pixels (default: a fifth of the image's short side, "
                        "retried at 20 px when nothing is found)")
    p.add_argument("--align", choices=("similarity", "crop", "dlib5"), default=None,
                   help="alignment override (default: the backbone's: crop for FaceNet, "
                        "similarity for ArcFace, dlib5 for dlib); see README for measurements")
    p.add_argument("--detector", default="auto", choices=("auto", "mtcnn", "scrfd"),
                   help="face detector: auto (default: scrfd when scrfd_2.5g_bnkps.onnx is in "
                        "$FACEPROBE_HOME/weights, else mtcnn with a warning; a resumed store "
                        "keeps its own), mtcnn (weights ship with facenet-pytorch) or scrfd "
                        "(SCRFD-2.5GF with 5 keypoints on onnxruntime, downloaded when missing "
                        "and online; better points and alignment, see README). The choice is "
                        "recorded in the recipe and replayed by score/serve")
    p.add_argument("--detector-weights", default=None, metavar="FILE",
                   help="SCRFD's ONNX file (default: scrfd_2.5g_bnkps.onnx from "
                        "$FACEPROBE_HOME/weights, or its download)")
    p.add_argument("--landmarks", default="detect", choices=("detect", "dataset", "dlib68"),
                   help="the 5 points that align each face: detect (default: the detector's), "
                        "dataset (the dataset's own where a record has them, skipping "
                        "detection) or dlib68 (dlib's 68-point predictor on its own HOG box "
                        "around the detected face: eye centres, nose tip, mouth corners; "
                        "recorded in the recipe and replayed by score/serve)")
    p.add_argument("--features", default="embedding",
                   help="comma-separated feature groups to store: embedding, pooled (FaceNet's "
                        "1792-d layer), geometry68 (dlib's 68 landmarks, normalised), geometry5 "
                        "(the 5 detected points, normalised), hog (of the aligned face), chips (the "
                        "aligned face crops themselves, uint8, for `faceprobe finetune`); "
                        "default: embedding")
    p.add_argument("--add-features", default=None, metavar="NAMES",
                   help="add these groups (geometry68, geometry5, hog, or a further backbone "
                        "such as arcface.mobilefacenet) to the complete store at --out without "
                        "detecting again or recomputing the others; resumable")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store instead of resuming it")
    p.add_argument("--repair", action="store_true",
                   help="first delete the shards `faceprobe store verify` finds damaged, then "
                        "resume: only those (and any missing ones) are embedded again")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad label line instead of skipping and reporting it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_engine_arguments(p)
    p.set_defaults(func=run_embed)

    s = subparsers.add_parser("store", help="inspect, export or import an embedding store",
                              description="Inspect an embedding store.")
    ssub = s.add_subparsers(dest="store_command", metavar="SUBCOMMAND")
    info = ssub.add_parser("info", help="rows by status, dimension, backbone, settings",
                           description="Summarise a store: rows, statuses, dimension, backbone.")
    info.add_argument("store", help="store directory")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=run_store_info)
    ver = ssub.add_parser(
        "verify", help="check every shard's checksum, row count and dimensions",
        description="Check every shard against its stats file (sha256, rows) and the manifest "
                    "(feature dimensions, expected shards). Names each damaged or missing shard; "
                    "exits 1 when any is found. `faceprobe embed ... --repair` re-embeds them.")
    ver.add_argument("store", help="store directory")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.set_defaults(func=run_store_verify)
    exp = ssub.add_parser(
        "export", help="write a store's rows to Parquet (streamed) or .npz",
        description="One row per store row: each feature group as a fixed-size float32 list, "
                    "labels by class name (age as float; missing = null), status, path, face, "
                    "identity, split, landmarks; the provenance as JSON under the 'faceprobe' "
                    "key of the Parquet metadata. .npz holds everything in memory.")
    exp.add_argument("store", help="store directory")
    exp.add_argument("--out", required=True, help="FILE.parquet or FILE.npz")
    exp.add_argument("--json", action="store_true", help="print the summary as JSON")
    exp.set_defaults(func=run_store_export)
    imp = ssub.add_parser(
        "import", help="build a store from Parquet (or .npy + --labels CSV) embeddings",
        description="Read embeddings and labels (streamed) into an ordinary store that train, "
                    "evaluate, verify and identify use. Bad rows (null, wrong length, NaN/inf) "
                    "are skipped and reported by row number (0-based); --strict stops at the "
                    "first.")
    imp.add_argument("file", help="FILE.parquet, or FILE.npy with --labels")
    imp.add_argument("--out", required=True, help="store directory to create")
    imp.add_argument("--labels", default=None, metavar="CSV",
                     help=".npy input: a CSV with one line per row (a path column; every other "
                          "column not path/split/identity/dataset/face/status is a label)")
    imp.add_argument("--embedding-column", default="embedding",
                     help="column of the 'embedding' group (default embedding)")
    imp.add_argument("--feature", action="append", default=None, metavar="GROUP=COLUMN",
                     help="a further feature group (repeatable; default for a faceprobe export: every "
                          "group it holds)")
    imp.add_argument("--label", action="append", default=None, metavar="NAME=COLUMN",
                     help="a label task (repeatable); strings become classes (sorted), numbers a "
                          "regression task; default: a faceprobe export's labels as exported, "
                          "else the columns named like known tasks (gender, age, race...)")
    imp.add_argument("--backbone-name", default=None,
                     help="backbone recorded as provenance (default: the file's faceprobe "
                          "metadata, else 'imported')")
    imp.add_argument("--shard-size", type=int, default=None,
                     help="rows per shard (default: the exported store's, else 10000)")
    imp.add_argument("--strict", action="store_true", help="stop at the first bad row")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing store")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(func=run_store_import)
    s.set_defaults(func=lambda args: (s.print_help(), 2)[1])


def run_embed(args: argparse.Namespace) -> int:
    from faceprobe.data.registry import get_reader
    from faceprobe.embed.distributed import embed_with_engine
    from faceprobe.embed.pipeline import format_summary

    if args.add_features is not None:
        return _run_add_features(args)
    features = tuple(f.strip() for f in args.features.split(",") if f.strip())
    if getattr(args, "engine", "local") == "ray":
        from faceprobe.embed.features import EXTRA_GROUPS
        from faceprobe.errors import ConfigError

        extra = [g for g in features if g in EXTRA_GROUPS or g == "chips"]
        from faceprobe.embed.detectors import recorded_detector

        recorded = None if args.overwrite else recorded_detector(args.out)
        if args.detector == "scrfd" or args.detector_weights or recorded == "scrfd":
            what = (f"the store {args.out} was detected with SCRFD" if recorded == "scrfd"
                    else "--detector scrfd / --detector-weights")
            raise ConfigError(f"--engine ray detects with MTCNN only and {what}; use "
                              "--engine local")
        args.detector = "mtcnn"  # what auto means on Ray
        if extra:
            raise ConfigError(f"--engine ray computes the backbone's groups only, not "
                              f"{', '.join(extra)}; embed with --engine local, or add them "
                              f"afterwards with --add-features {','.join(extra)}")
    reader = get_reader(args.dataset, args.root, strict=args.strict)
    summary = embed_with_engine(
        args, reader.records(), out=args.out, backbone=args.backbone, weights=args.weights,
        shard_size=args.shard_size, batch_size=args.batch_size, device=args.device,
        precision=args.precision, workers=args.workers, limit=args.limit,
        multi_face=args.multi_face, no_face=args.no_face, min_face_size=args.min_face_size,
        landmarks=args.landmarks, features=features, overwrite=args.overwrite,
        show_progress=not args.no_progress, vocabularies=reader.vocabularies(),
        dataset=reader.name, root=str(Path(args.root).resolve()), repair=args.repair,
        **({"align": args.align} if args.align else {}),
        **({"detector": args.detector, "detector_weights": args.detector_weights}
           if getattr(args, "engine", "local") != "ray" else {}),
    )
    _report_problems(reader.problems)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_summary(summary))
    return 0


def _run_add_features(args: argparse.Namespace) -> int:
    from faceprobe.embed.add_features import add_features

    groups = [g.strip() for g in args.add_features.split(",") if g.strip()]
    s = add_features(args.out, groups, backbone=args.backbone, weights=args.weights,
                     device=args.device, batch_size=args.batch_size, workers=args.workers,
                     show_progress=not args.no_progress)
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        added = ", ".join(s["added"]) or "nothing (the store has them all)"
        print(f"added {added}: shards written {s['shards_written']}, skipped "
              f"{s['shards_skipped']}, {s['rows']} rows in {s['seconds']:.1f}s; store {s['store']}")
    return 0


def run_store_info(args: argparse.Namespace) -> int:
    from faceprobe.embed.store import Store

    info = Store(args.store).info()
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
        return 0
    status = ", ".join(f"{k} {v}" for k, v in info["status"].items()) or "none"
    lines = [
        f"store      {info['path']}",
        f"rows       {info['rows']} ({status})",
        f"backbone   {info['backbone']} ({info['dim']}-d, {info.get('precision')}), features "
        + ", ".join(f"{k} {v}" for k, v in info["features"].items()),
        f"weights    {info.get('weights_sha256')}",
        *[f"group      {b['group']}: {b['name']} (sha256 {str(b['weights_sha256'])[:12]}; "
          f"{_preprocessing(b.get('config') or {})})" for b in info["recipe"]["backbones"]],
        f"alignment  {info.get('alignment')}",
        f"dataset    {info.get('dataset')} at {info.get('root')}",
        f"shards     {info['shards']}/{info.get('shards_expected')}"
        + ("" if info.get("complete") else " (incomplete: re-run the embed command to resume)"),
        "tasks      " + (", ".join(info["tasks"]) or "none"),
    ]
    print("\n".join(lines))
    return 0


def _preprocessing(c: dict) -> str:
    if not c:
        return "preprocessing not recorded"
    norm = c.get("normalisation") or f"mean {c.get('mean')} std {c.get('std')}"
    return (f"{c.get('input_size')}px {c.get('channel_order', 'RGB')} {c.get('layout', 'NCHW')}, "
            f"{norm}, {c.get('alignment')}")


def _report_problems(problems: dict) -> None:
    """One stderr line per kind of dataset problem, naming the first occurrence, so skipped
    label lines are not silent (`faceprobe data inspect` lists them all)."""
    for kind, items in sorted(problems.items()):
        first = items[0]
        where = f"{first['file']}:{first['line']}: " if "file" in first and "line" in first else ""
        what = first.get("message", "")
        if "path" in first and not where:
            what = f"{first['path']}: {what}"
        print(f"faceprobe: dataset {kind}: {len(items)} (first: {where}{what}); see "
              "`faceprobe data inspect`, or --strict to stop at a bad line", file=sys.stderr)


def run_store_verify(args: argparse.Namespace) -> int:
    from faceprobe.embed.store import Store

    report = Store(args.store).verify()
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
        return 0 if report["ok"] else 1
    for d in report["damaged"]:
        print(f"damaged  shard {d['shard']} ({d['file']}): {d['problem']}")
    if report["missing"]:
        print(f"missing  shard(s) {_ranges(report['missing'])} (run not finished: re-run the "
              "embed command to resume)")
    expected = report["shards_expected"]
    state = "ok" if report["ok"] else "DAMAGED" if report["damaged"] else "INCOMPLETE"
    print(f"{state}: {report['shards']}/{expected if expected is not None else '?'} shards "
          f"intact, {report['rows']} rows; store {report['store']}"
          + ("; re-embed the damaged shards with `faceprobe embed ... --repair`"
             if report["damaged"] else ""))
    return 0 if report["ok"] else 1


def run_store_export(args: argparse.Namespace) -> int:
    from faceprobe.embed.exchange import export_store

    res = export_store(args.store, args.out)
    print(json.dumps(res, indent=1) if args.json else
          f"wrote {res['out']}: {res['rows']} rows from {res['shards']} shards, features "
          + ", ".join(f"{k} {v}" for k, v in res["features"].items())
          + "; labels " + (", ".join(res["tasks"]) or "none"))
    return 0


def run_store_import(args: argparse.Namespace) -> int:
    from faceprobe.embed.exchange import import_file

    res = import_file(args.file, args.out, embedding_column=args.embedding_column,
                      features=args.feature, labels=args.label, labels_csv=args.labels,
                      backbone_name=args.backbone_name, strict=args.strict,
                      shard_size=args.shard_size, overwrite=args.overwrite)
    if res["bad_rows"]:
        first = "; ".join(f"row {b['row']}: {b['problem']}" for b in res["bad"][:5])
        print(f"faceprobe: skipped {res['bad_rows']} bad rows (first: {first}); --strict stops "
              "at the first", file=sys.stderr)
    print(json.dumps(res, indent=1) if args.json else
          f"wrote store {res['store']}: {res['rows']} rows in {res['shards']} shards, backbone "
          f"{res['backbone']}, features " + ", ".join(f"{k} {v}" for k, v in res["features"].items())
          + "; labels " + (", ".join(f"{t} ({'regression' if v is None else f'{v} classes'})"
                                     for t, v in res["tasks"].items()) or "none"))
    return 0


def _ranges(values: list[int]) -> str:
    out, start, prev = [], None, None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = v
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)
