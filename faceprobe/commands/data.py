"""``faceprobe datasets`` and ``faceprobe inspect``: what formats exist, and what a dataset holds."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "datasets", help="list the dataset formats and the labels each provides",
        description="List the dataset formats faceprobe reads and the label tasks each provides.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_datasets)

    p = subparsers.add_parser(
        "inspect", help="count images, labels, splits and problems of a dataset",
        description="Read a dataset and report image and label counts, splits, identities and "
                    "every problem found (malformed names, bad label lines, missing, unreadable "
                    "and duplicate images). Exits 0 even when problems were found.")
    p.add_argument("dataset", metavar="DATASET",
                   help="dataset format (see `faceprobe datasets`), e.g. utkface, celeba, csv")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="dataset directory (for csv: the CSV file or its directory)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--strict", action="store_true",
                   help="stop with an error at the first bad label line instead of skipping it")
    p.add_argument("--no-images", action="store_true",
                   help="do not read the image files (skips duplicate and unreadable checks)")
    p.set_defaults(func=cmd_inspect)


def cmd_datasets(args: argparse.Namespace) -> int:
    from faceprobe.data.registry import list_readers

    readers = list_readers()
    if args.json:
        print(json.dumps([{"name": r.name, "description": r.description, "tasks": list(r.tasks)}
                          for r in readers], indent=2))
        return 0
    width = max(len(r.name) for r in readers)
    for r in readers:
        print(f"{r.name:<{width}}  {r.description}")
        tasks = ", ".join(r.tasks) if r.tasks else "the file's label columns"
        if r.name == "lfw":
            tasks = "none (identity only; verification pairs from pairs.txt)"
        elif r.name == "folder":
            tasks = "class (when every image sits in a class subfolder)"
        print(f"{'':<{width}}  tasks: {tasks}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from faceprobe.data.inspect import format_summary, inspect_dataset

    result = inspect_dataset(args.dataset, args.root, strict=args.strict,
                             check_images=not args.no_images)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_summary(result))
    return 0
