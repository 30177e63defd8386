"""``faceprobe finetune``: a few lines over ``faceprobe.identity.finetune_store``."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the MobileFaceNet backbone on a store's identities (ArcFace "
                         "loss, from its kept chips; resumable)",
        description="Train arcface.mobilefacenet with an additive angular margin on the "
                    "identities of a store embedded with --features embedding,chips. Each epoch "
                    "ends in a checkpoint; the same command resumes after a kill. The best "
                    "epoch on held-out images of the training identities is written to --out, "
                    "for `faceprobe embed --backbone arcface.mobilefacenet --weights OUT`.")
    p.add_argument("store", metavar="STORE", help="store with chips and identities")
    p.add_argument("--backbone", default="arcface.mobilefacenet",
                   help="backbone to fine-tune (only arcface.mobilefacenet can be)")
    p.add_argument("--out", required=True, metavar="WEIGHTS.pt", help="weights file to write")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="starting weights, a state dict (default: mobilefacenet-foamliu.pt from "
                        "$FACEPROBE_HOME/weights, or its download)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="checkpoint directory (default: OUT.run); reused to resume")
    p.add_argument("--splits", default="train",
                   help="store splits to train on, comma-separated, or 'all' (default: train; "
                        "a store without splits uses every row)")
    p.add_argument("--per-identity", type=int, default=None, metavar="N",
                   help="train on each identity's first N images only (store order), keeping "
                        "the rest as new images for `faceprobe identify --per-identity N`")
    p.add_argument("--epochs", type=int, default=10, help="epoch cap (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="chips per step (default 64)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="margin layer's learning rate; the backbone learns at a tenth (default "
                        "0.01)")
    p.add_argument("--s", type=float, default=32.0, help="ArcFace logit scale (default 32)")
    p.add_argument("--m", type=float, default=0.5, help="ArcFace margin, radians (default 0.5)")
    p.add_argument("--patience", type=int, default=3,
                   help="epochs without a better validation score before stopping (default 3)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (default: CUDA when present, else the CPU), cpu or cuda")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: fp32 on a CPU, bf16 on a GPU that has it")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, order and flips")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own). On a CPU shared with other "
                        "work 1 is far faster than 2 (a batch-32 step 1.7-2.5 s vs 6.7 s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from faceprobe.identity.finetune_store import finetune_store

    splits = None if args.splits == "all" else [s.strip() for s in args.splits.split(",")
                                                if s.strip()]
    summary = finetune_store(
        args.store, out=args.out, backbone=args.backbone, weights=args.weights,
        workdir=args.workdir, splits=splits, per_identity=args.per_identity, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, s=args.s, m=args.m, patience=args.patience,
        device=args.device, precision=args.precision, seed=args.seed, threads=args.threads,
        show_progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(f"wrote {args.out}; embed with `faceprobe embed ... --backbone {args.backbone} "
              f"--weights {args.out}`")
    return 0
