"""``faceprobe landmarks evaluate|train|predict``: a few lines over ``faceprobe.landmarks``."""

from __future__ import annotations

import argparse
import json
import math


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "landmarks", help="5-point landmarks: evaluate NME, train and run a KeypointRCNN",
        description="Measure landmark error against a store's ground-truth points (MTFL, CelebA), "
                    "and train/predict a torchvision KeypointRCNN whose points are written into "
                    "the store as the extra field landmarks_rcnn.")
    lsub = group.add_subparsers(dest="landmarks_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda _a: (group.print_help(), 2)[1])

    p = lsub.add_parser(
        "evaluate", help="normalised mean error (NME) of predicted vs. ground-truth points",
        description="Compare the detector's points (or KeypointRCNN's) with the dataset's, in "
                    "original image coordinates: NME (by the chosen normaliser and by the "
                    "annotation box's sqrt(w*h), which holds up on profiles), CED and AUC@0.10, "
                    "per-point error, failure rate at NME > 0.10, per dataset and per pose (MTFL). "
                    "Each annotated face is matched to the row whose box overlaps the box of its "
                    "annotated points most (IoU), so with --multi-face all the right face is "
                    "evaluated; faces with no row of predicted points are counted as missing, "
                    "faces whose best IoU is below --min-iou as unmatched, neither averaged in.")
    p.add_argument("store", metavar="STORE", help="embedding store with ground-truth landmarks")
    p.add_argument("--source", choices=("detected", "rcnn"), default="detected",
                   help="points to evaluate: the embed stage's detector (detected) or "
                        "`landmarks predict` output (rcnn) (default: detected)")
    p.add_argument("--norm", choices=("interocular", "interpupil", "box", "box_size"),
                   default="interocular",
                   help="normalising distance: between the true eye points, the face box "
                        "diagonal, or sqrt(w*h) of the box of the annotated points; box_size is "
                        "always reported too (interocular when box_size is chosen) "
                        "(default: interocular)")
    p.add_argument("--min-iou", type=float, default=0.0, metavar="IOU",
                   help="least IoU between a row's face box and the annotated points' box for "
                        "the row to count as that face, e.g. 0.3 to set aside faces where the "
                        "detector found another face (default: 0, any row with points)")
    p.add_argument("--splits", nargs="+", metavar="NAME",
                   help="evaluate only these splits' rows (default: all; with --source rcnn the "
                        "images the model trained on are always left out)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--report", metavar="DIR",
                   help="also write an HTML report (ced.png, metrics.json, overlays of worst "
                        "and median faces) here")
    p.set_defaults(func=_evaluate)

    p = lsub.add_parser(
        "train", help="train (or resume) a KeypointRCNN on a store's ground-truth landmarks",
        description="Train torchvision's KeypointRCNN with 5 keypoints on every row that has "
                    "dataset landmarks, except a held-out fraction of the images (--holdout) that "
                    "`landmarks evaluate --source rcnn` then scores. The default backbone is the "
                    "face-pretrained MobileFaceNet under an FPN, which trains on a CPU (68 min on "
                    "2 cores for 4 epochs of MTFL's 2,731 training images); resnet50 is torchvision's layout "
                    "for COCO weights and wants a GPU. A checkpoint is written to MODEL after "
                    "every epoch; running again with the same --out resumes it. Uses CUDA when "
                    "present.")
    p.add_argument("store", metavar="STORE", help="embedding store with ground-truth landmarks")
    p.add_argument("--out", required=True, metavar="MODEL",
                   help="model directory (checkpoint.pt, history.json); resumed if it exists")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="total epochs, counting those already done (default: 10, or the "
                        "checkpoint's)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto = cuda when available)")
    p.add_argument("--backbone", choices=("mobilefacenet", "resnet50"),
                   help="feature extractor under the FPN (default: mobilefacenet)")
    p.add_argument("--weights", metavar="pretrained|coco|imagenet|none|FILE",
                   help="initial weights: pretrained = mobilefacenet-foamliu.pt for the "
                        "MobileFaceNet (resolved like the embedding backbone's) or the COCO "
                        "keypoint model for resnet50; coco / imagenet (resnet50: looked up in "
                        "$FACEPROBE_HOME/weights and torch's checkpoint cache, never "
                        "downloaded); none (random); or a file: a detection checkpoint, a "
                        "ResNet-50 or a MobileFaceNet state dict (default: pretrained)")
    p.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="fraction of the images kept out of training for evaluation, chosen "
                        "by a seeded hash of each path (default: 0.2)")
    p.add_argument("--classes", choices=("face", "gender"),
                   help="detection classes: face, or woman/man so the model also predicts gender "
                        "(default: face)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per step (default: 4)")
    p.add_argument("--lr", type=float,
                   help="AdamW learning rate (default: 5e-4 mobilefacenet, 1e-4 resnet50)")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="shorter image side inside the model (default: 256 mobilefacenet, 512 "
                        "resnet50; small values such as 128 for CPU smoke tests)")
    p.add_argument("--max-iters", type=int, metavar="N",
                   help="stop each epoch after N iterations (smoke tests)")
    p.add_argument("--rois-per-image", type=int, metavar="N",
                   help="proposals sampled per image for the heads, a quarter positive "
                        "(default: 64 mobilefacenet, 128 resnet50; e.g. 4 for CPU smoke tests)")
    p.add_argument("--splits", nargs="+", metavar="NAME",
                   help="train only on these splits, e.g. train (default: all rows)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="image loading processes (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--seed", type=int,
                   help="seed for the held-out images, shuffling and flips (default: 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_train)

    p = lsub.add_parser(
        "predict", help="write KeypointRCNN points and scores into a store (landmarks_rcnn)",
        description="Run a trained model over every row's image, keep the detection that "
                    "overlaps the row's box most (else the best-scoring one) and write its points "
                    "and scores as extra fields next to the shards, which are not modified. "
                    "Shards already done by the same model are skipped.")
    p.add_argument("model", metavar="MODEL", help="model directory made by `landmarks train`")
    p.add_argument("store", metavar="STORE", help="embedding store to annotate")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per forward pass (default: 8)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto = cuda when available)")
    p.add_argument("--max-detections", type=int, default=5, metavar="N",
                   help="candidate faces per image to choose from (default: 5)")
    p.add_argument("--proposals", type=int, metavar="N",
                   help="region proposals scored per image (default: the model's, 300)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo shards that already have predictions")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_predict)


def _clean(o):
    """JSON has no NaN: missing numbers print as null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def _f(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"


def _evaluate(args: argparse.Namespace) -> int:
    from faceprobe.landmarks.evaluate import evaluate_landmarks

    r = evaluate_landmarks(args.store, source=args.source, norm=args.norm,
                           report_dir=args.report, min_iou=args.min_iou, splits=args.splits)
    if args.json:
        print(json.dumps(_clean(r), indent=1))
        return 0
    sn = r["second_norm"]
    print(f"{args.source} landmarks, NME ({r['norm']}) {_f(r['nme'])}, median {_f(r['median'])}, "
          f"failure rate {_f(r['failure_rate'])} at > {r['failure_threshold']}; "
          f"{r['evaluated']} faces evaluated, {r['missing']} missing"
          + (f"; {r['rows_trained_on_left_out']} rows the model trained on left out"
             if args.source == "rcnn" else ""))
    print(f"AUC@{r['auc_limit']:g} {_f(r['auc'])}; NME ({sn}) {_f(r[f'nme_{sn}'])}, "
          f"AUC@{r['auc_limit']:g} {_f(r['by_norm'][sn]['auc'])}")
    mt = r["matching"]
    print(f"matched {mt['matched']} of {mt['annotated_faces']} annotated faces at IoU >= "
          f"{mt['min_iou']:g} (median IoU {_f(mt['median_iou'])}), {mt['unmatched']} unmatched, "
          f"{mt['missing']} missing; {mt['images_with_several_rows']} image(s) with several rows")
    for name, v in zip(r["point_names"], r["per_point"], strict=True):
        print(f"  {name:<12} {_f(v)}")
    for title, key in (("dataset", "per_dataset"), ("pose", "per_pose")):
        for name, sub in r.get(key, {}).items():
            print(f"  {title} {name}: NME {_f(sub['nme'])} ({sn} {_f(sub[f'nme_{sn}'])}), "
                  f"median {_f(sub['median'])}, failure rate {_f(sub['failure_rate'])}, "
                  f"{sub['evaluated']} evaluated, {sub['missing']} missing, "
                  f"{sub['unmatched']} unmatched")
    if args.report:
        print(f"report: {args.report}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from faceprobe.landmarks.rcnn_train import train

    r = train(args.store, args.out, epochs=args.epochs, device=args.device, weights=args.weights,
              classes=args.classes, batch_size=args.batch_size, lr=args.lr,
              image_size=args.image_size, max_iters=args.max_iters, splits=args.splits,
              workers=args.workers, seed=args.seed, rois_per_image=args.rois_per_image,
              backbone=args.backbone, holdout=args.holdout)
    if args.json:
        print(json.dumps(_clean(r), indent=1))
        return 0
    last = r["history"][-1] if r["history"] else {}
    print(f"model {r['model']}: {r['epochs_done']} epoch(s) on {r['faces']} faces ({r['device']})"
          + (f", last loss {last['loss']:.4f}" if "loss" in last else ""))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from faceprobe.landmarks.rcnn import predict

    r = predict(args.model, args.store, batch_size=args.batch_size, device=args.device,
                overwrite=args.overwrite, max_detections=args.max_detections,
                proposals=args.proposals)
    if args.json:
        print(json.dumps(_clean(r), indent=1))
        return 0
    print(f"{r['rows']} rows predicted in {r['written']} shard(s) ({r['skipped']} already done): "
          f"{r['predicted']} with points, {r['no_detection']} without a detection, "
          f"{r['unreadable']} unreadable")
    if r.get("gender_accuracy") is not None:
        print(f"gender accuracy {r['gender_accuracy']:.4f} on {r['gender_evaluated']} rows")
    return 0
