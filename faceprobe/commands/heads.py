"""``faceprobe train | tune | score | evaluate``: heads over an embedding store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADS = ("mlp", "logreg", "svm", "linsvm", "knn", "hgb", "ridge", "svr", "arcface")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _features(value: str | None) -> list[str] | None:
    return [f.strip() for f in value.split(",") if f.strip()] if value else None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", metavar="STORE", help="embedding store directory (from `faceprobe embed`)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks, e.g. gender,age,race (default: those of "
                        "gender, age, race the store has)")
    p.add_argument("--out", required=True, metavar="MODEL",
                   help="model bundle directory to write")
    p.add_argument("--features", default=None,
                   help="comma-separated feature groups to use, e.g. embedding,geometry68,hog "
                        "(default: every group in the store; each is standardised on its own)")
    p.add_argument("--class-weighting", choices=("inverse", "none"), default="inverse",
                   help="inverse-frequency class weights in the loss (default) or none")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and the model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out bundle")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a head on a store and save a model bundle",
                              description="Split the store (official split, else seeded and "
                              "identity-disjoint), fit a head, print validation metrics.")
    _common(p)
    p.add_argument("--head", choices=HEADS, default="mlp",
                   help="mlp (multi-output Keras head, default), a scikit-learn baseline, or "
                        "arcface (--tasks identity: an identity space learnt with an ArcFace "
                        "margin, for `verify/identify --model`)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (per epoch for mlp, per task for the others; the "
                        "summary line of each fit is still printed)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("tune", help="search head hyperparameters (resumable) and save the best",
                              description="KerasTuner search over a head's hyperparameters. The "
                              "search lives in --dir; running again continues it.")
    _common(p)
    p.add_argument("--head", choices=("mlp", "svm", "logreg", "linsvm", "knn", "hgb", "ridge",
                                       "arcface"),
                   default="mlp", help="head to tune (default mlp; arcface with --tasks "
                                       "identity: out_dim, depth, s, m)")
    p.add_argument("--tuner", choices=("random", "hyperband", "bayes"), default="random",
                   help="search strategy (hyperband: mlp only)")
    p.add_argument("--trials", type=int, default=20, help="total number of trials (default 20)")
    p.add_argument("--dir", required=True, help="search directory; reused to resume")
    p.add_argument("--max-epochs", type=int, default=200,
                   help="epoch cap of an mlp trial and of its refit, both early-stopped with "
                        "the head's patience (default 200, the head's own)")
    p.add_argument("--role", choices=("chief", "worker"), default=None,
                   help="distributed search: the chief serves trials at --oracle and refits the "
                        "best into --out; workers run trials (same command, shared --dir)")
    p.add_argument("--oracle", default=None, metavar="HOST:PORT",
                   help="with --role: where the chief listens (chief: an address of its own, "
                        "0.0.0.0 for all; workers: the chief's address)")
    p.set_defaults(func=cmd_tune)

    p = subparsers.add_parser("score", help="write predictions for a store or image files",
                              description="Score every row of a store (streamed), or embed "
                              "images/directories exactly as the bundle's training store was "
                              "embedded (backbones, weights, preprocessing, alignment, detection "
                              "policy: its recorded recipe) and score them.")
    p.add_argument("model", metavar="MODEL", help="model bundle directory")
    p.add_argument("inputs", nargs="+", metavar="STORE|FILE.parquet|IMAGE|DIR",
                   help="one store directory, one Parquet file of embeddings (a `store export` "
                        "or a list column per feature group), or image files and directories")
    p.add_argument("--out", required=True, help="predictions file: .csv or .parquet")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per batch for a store (default: one shard)")
    p.add_argument("--weights", default=None,
                   help="images only: the backbone weights file(s), comma-separated in the "
                        "recipe's backbone order, when the recorded files are not where they "
                        "were (their sha256 must match the bundle's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="images only: where the backbones run")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (rows scored for a store; images embedded and rows "
                        "scored for images)")
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser(
        "evaluate", help="metrics of a model bundle on a store split",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per task: accuracy, balanced accuracy, per-class precision/recall/F1, "
                    "kappa, confusion matrix,\nROC AUC; age MAE/RMSE/CS5; 95% bootstrap "
                    "intervals; metrics per demographic group.\n--report writes an HTML report. "
                    "The output says which rows were used and why.\n\n"
                    "Rows: on the bundle's training store (same records_sha256 or path as "
                    "recorded in the\nbundle) its recorded test split; on any other store every "
                    "usable row labelled for an\nevaluated task (none of them were trained on).\n\n"
                    "Tasks: a task whose class vocabulary in the store differs from the bundle's "
                    "(e.g. race:\nUTKFace's 5 classes, FairFace's 7) is skipped with the reason, "
                    "unless --map declares how\nthe store's classes map onto the bundle's, e.g.\n"
                    "  --map 'race=East Asian:Asian,Southeast Asian:Asian,"
                    "Latino_Hispanic:Others,Middle Eastern:Others'\n"
                    "Store classes not named keep their name (White, Black, Indian); CLASS:- "
                    "leaves that class's\nrows out of the task. Or a JSON file: "
                    "{\"race\": {\"East Asian\": \"Asian\", \"Middle Eastern\": null}}.")
    p.add_argument("model", metavar="MODEL", help="model bundle directory")
    p.add_argument("store", metavar="STORE", help="embedding store directory")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default=None,
                   help="rows to evaluate on (default: the recorded test split on the bundle's "
                        "training store, every labelled row on another store; there test/val/"
                        "train is the store's official split if its dataset has one)")
    p.add_argument("--map", action="append", default=None, dest="label_map",
                   metavar="TASK=STORE_CLASS:BUNDLE_CLASS,...|FILE.json",
                   help="how the store's classes of TASK correspond to the bundle's (repeat per "
                        "task; CLASS:- leaves a class out; a JSON file {TASK: {STORE_CLASS: "
                        "BUNDLE_CLASS}} for names with ',' or ':')")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--report", metavar="DIR",
                   help="write index.html (self-contained), metrics.json and summary.md here")
    p.set_defaults(func=cmd_evaluate)


def cmd_train(args) -> int:
    from faceprobe.heads.evaluate import format_metrics
    from faceprobe.heads.train import train_store

    _log(f"training {args.head} on {args.store}")
    if args.head == "arcface" or args.tasks == "identity":
        return _train_margin(args)
    res = train_store(args.store, args.tasks, args.head, out=args.out, features=_features(args.features),
                      class_weighting=args.class_weighting, seed=args.seed,
                      overwrite=args.overwrite, log=_log, show_progress=not args.no_progress)
    print("validation metrics:")
    print(format_metrics(res.metrics))
    print(f"saved {res.bundle}")
    return 0


def _train_margin(args) -> int:
    from faceprobe.errors import ConfigError
    from faceprobe.heads.margin_train import train_margin_store

    if args.head != "arcface" or args.tasks not in (None, "identity"):
        raise ConfigError("the identity task is learnt by --head arcface alone, and that head "
                          "learns only it: use --tasks identity --head arcface")
    res = train_margin_store(args.store, out=args.out, features=_features(args.features),
                             seed=args.seed, overwrite=args.overwrite, log=_log)
    m = res.metrics
    if m.get("identification_top1") is not None:
        print(f"validation identification top-1 {m['identification_top1']:.4f} (raw "
              f"embeddings {m['raw_identification_top1']:.4f}) over {m['probes']} probes of "
              f"{m['identities']} identities not trained on")
    print(f"saved {res.bundle}")
    return 0


def cmd_tune(args) -> int:
    from faceprobe.embed.store import Store
    from faceprobe.heads.evaluate import format_metrics
    from faceprobe.heads.train import resolve_features
    from faceprobe.heads.tune import tune_store

    # default: every group in the store (resolved here: the tuner fingerprints the groups)
    features = resolve_features(Store(args.store), _features(args.features))
    res = tune_store(args.store, args.tasks, head=args.head, tuner=args.tuner, trials=args.trials,
                     directory=args.dir, out=args.out, features=features,
                     class_weighting=args.class_weighting, seed=args.seed,
                     max_epochs=args.max_epochs, overwrite=args.overwrite, log=_log,
                     role=args.role, oracle=args.oracle)
    if args.role == "worker":
        print(f"worker ran {res.trials_run_now} trials in {res.seconds:.0f}s; the search is "
              "over; the chief refits and saves the best")
        return 0
    print(f"{res.trials} trials ({res.trials_run_now} this run) in {res.seconds:.0f}s; "
          f"best score {res.best_score:.4f}: "
          + ", ".join(f"{k}={v}" for k, v in res.best_params.items()))
    print("validation metrics of the refitted best:")
    print(format_metrics(res.metrics))
    print(f"saved {res.bundle}")
    return 0


def cmd_score(args) -> int:
    from faceprobe.embed.store import MANIFEST
    from faceprobe.heads.bundle import load_bundle
    from faceprobe.heads.score import score_images, score_parquet, score_store

    bundle = load_bundle(args.model)
    first = Path(args.inputs[0])
    show = not args.no_progress
    if len(args.inputs) == 1 and (first / MANIFEST).exists():
        res = score_store(bundle, first, args.out, batch_size=args.batch_size,
                          show_progress=show)
    elif len(args.inputs) == 1 and first.suffix.lower() == ".parquet" and first.is_file():
        res = score_parquet(bundle, first, args.out, batch_size=args.batch_size,
                            show_progress=show)
    else:
        res = score_images(bundle, args.inputs, args.out, weights=args.weights,
                           device=args.device, show_progress=show)
    for task, why in (res.get("labels_not_comparable") or {}).items():
        print(f"note: {task}: the store's labels are not comparable with the predictions ({why})"
              "; the predictions use the bundle's classes (no true labels are written)")
    print(f"wrote {res['out']}: {res['rows']} rows ({res['scored']} scored, {res['failed']} "
          f"without a usable face) in {res['seconds']:.1f}s, {res['rows_per_s']:,.0f} rows/s")
    return 0


def cmd_evaluate(args) -> int:
    from faceprobe.heads.evaluate import format_metrics, parse_label_map
    from faceprobe.heads.report import evaluate_to_report

    res = evaluate_to_report(args.model, args.store, args.report, split=args.split,
                             label_map=parse_label_map(args.label_map))
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        print(f"{res['head']} on {res['store']}")
        print(f"rows used: {res['rows_used']}, split {res['split']}: {res['split_description']}")
        for note in res.get("notes") or ():
            print(f"note: {note}")
        print(format_metrics(res))
        if args.report:
            print(f"report: {res['report']}")
    return 0
