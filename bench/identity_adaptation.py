"""Identity adaptation on CelebA: raw MobileFaceNet embeddings vs a margin head vs a fine-tuned
backbone (README "Identity adaptation"; HTML report in --report).

    python bench/identity_adaptation.py [--enrol 20] [--epochs 6] [--workdir DIR]

Data: ``../shared/data/celeba`` (2,940 images, 98 identities, 30 images each; official
partitions: 71 train, 14 val, 13 test identities, sharing none).

- The store: every image embedded once with ``arcface.mobilefacenet`` and its chips kept
  (``--features embedding,chips``), cached in --workdir.
- Training rows: of each *train-partition* identity, its first ``--enrol`` usable images in store
  order. The margin head (``MarginHead``) learns from their embeddings, the fine-tune
  (``faceprobe.identity.finetune``) from their chips; the fine-tuned weights embed every image
  again into a second store (same detections: the chips are cut from the same points).
- Closed-set identification (identities seen in training, images never seen): ``identify`` with
  gallery = probe split ``train`` and ``per_identity=--enrol``, so each identity's template is the
  mean of exactly its training images and its other images are the probes; top-1 / top-5.
- Open-set verification (identities never seen: the val and test partitions, 27 people):
  ``--pairs`` seeded pairs per partition (``generate_pairs``), half same-person, 10 folds;
  ``verify`` (threshold chosen on the other folds): accuracy with a 95% Wilson interval over the
  pairs, ROC AUC, TAR at FAR 1e-2 and 1e-1 (FAR 1e-3 would rest on a handful of pairs here).
- Per attribute (Eyeglasses, Wearing_Hat, Smiling, Male, Young, Heavy_Makeup): the same on pairs
  whose first image has it.

Every number is on rows the models never trained on. Results: --json (default
bench/results/identity_adaptation.json), a Markdown table on stdout, and --report/index.html.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faceprobe  # noqa: E402,F401  (sets the Keras backend)

SHARED = REPO.parent / "shared"
ATTRIBUTES = ("Eyeglasses", "Wearing_Hat", "Smiling", "Male", "Young", "Heavy_Makeup")
UNSEEN = ("val", "test")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def embed(workdir: Path, name: str, weights=None, chips: bool = False) -> Path:
    from faceprobe.data.registry import get_reader
    from faceprobe.embed.pipeline import embed_dataset, format_summary

    out = workdir / name
    root = SHARED / "data" / "celeba"
    reader = get_reader("celeba", root)
    t0 = time.perf_counter()
    s = embed_dataset(list(reader.records()), out, "arcface.mobilefacenet", weights=weights,
                      features=("embedding", "chips") if chips else ("embedding",),
                      vocabularies=reader.vocabularies(), dataset=reader.name,
                      root=str(root.resolve()), show_progress=True,
                      detector="mtcnn")  # the README's numbers were measured with MTCNN
    if s["shards_written"]:
        _log(f"{name}: {format_summary(s)} ({time.perf_counter() - t0:.0f} s)")
    return out


def wilson(acc: float, n: int) -> list[float]:
    from scipy.stats import binomtest

    ci = binomtest(int(round(acc * n)), n).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def unseen_pairs(store, n: int, attribute: str | None = None) -> list[tuple]:
    """Pairs from each unseen partition (never across them), folds round-robin per class."""
    from faceprobe.errors import FaceprobeError
    from faceprobe.identity.pairs import generate_pairs

    pairs = []
    for split in UNSEEN:
        try:
            pairs += generate_pairs(store, n, seed=0, attribute=attribute, split=split)
        except FaceprobeError:  # e.g. nobody in this partition wears a hat
            continue
    count = {True: 0, False: 0}
    out = []
    for a, b, same in pairs:
        out.append((count[same] % 10, a, b, same))
        count[same] += 1
    return out


def verification(store, pairs, transform=None) -> dict | None:
    from faceprobe.errors import FaceprobeError
    from faceprobe.identity.verification import verify

    if len(pairs) < 20:
        return None
    try:
        r = verify(store, pairs, transform=transform)
    except FaceprobeError as exc:
        _log(f"verify: {exc}")
        return None
    return {"accuracy": r["accuracy"], "ci95": wilson(r["accuracy"], r["pairs_used"]),
            "pairs": r["pairs_used"], "roc_auc": r["roc_auc"],
            "tar_at_far": {k: v for k, v in r["tar_at_far"].items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/faceprobe-bench/identity")
    ap.add_argument("--enrol", type=int, default=20, help="training images per train identity")
    ap.add_argument("--epochs", type=int, default=6, help="fine-tune epochs (early-stopped)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None,
                    help="fine-tune torch threads (1 on a machine shared with other work)")
    ap.add_argument("--pairs", type=int, default=3000, help="pairs per unseen partition")
    ap.add_argument("--attribute-pairs", type=int, default=1000)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "identity_adaptation.json"))
    ap.add_argument("--report", default=str(REPO / "reports" / "identity_adaptation"))
    args = ap.parse_args()
    weights = SHARED / "weights" / "mobilefacenet-foamliu.pt"
    if not weights.is_file():
        print(f"needs {weights} (see ../shared/weights/README.md)", file=sys.stderr)
        return 2

    from faceprobe.embed.store import Store
    from faceprobe.heads.margin import MarginHead
    from faceprobe.identity.finetune_store import finetune_store, first_per_identity
    from faceprobe.identity.identification import identify

    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    raw = Store(embed(wd, "raw", chips=True))
    rows = raw.load(splits=["train"], tasks=())  # the rows load_chips gives, in the same order
    train = first_per_identity(rows.identity, args.enrol)
    _log(f"training rows: {int(train.sum())} images of {len(set(rows.identity[train]))} "
         f"identities; held-out images of them: {int((~train).sum())}")

    t0 = time.perf_counter()
    head = MarginHead(features=["embedding"], seed=0).fit(rows.subset(train), log=_log)
    margin_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ft_out = wd / "finetuned.pt"
    ft = finetune_store(raw, out=ft_out, weights=weights, workdir=wd / "finetune-run",
                        splits=["train"], per_identity=args.enrol, epochs=args.epochs,
                        batch_size=args.batch_size, threads=args.threads, log=_log)
    finetune_s = time.perf_counter() - t0
    tuned = Store(embed(wd, "finetuned", weights=str(ft_out)))

    def space(name):
        if name == "margin head":
            return raw, head.transform
        return (tuned, None) if name == "fine-tuned backbone" else (raw, None)

    names = ("raw", "margin head", "fine-tuned backbone")
    results: dict = {"enrol": args.enrol, "training_images": int(train.sum()),
                     "training_identities": len(set(rows.identity[train])),
                     "margin_head": {"seconds": round(margin_s, 1), "params": head.get_params()
                                     if hasattr(head, "get_params") else None},
                     "finetune": {"seconds": round(finetune_s, 1),
                                  **{k: v for k, v in ft.items() if k != "history"}},
                     "identification": {}, "verification": {}, "attributes": {}}
    pairs = unseen_pairs(raw, args.pairs)
    attr_pairs = {a: unseen_pairs(raw, args.attribute_pairs, a) for a in ATTRIBUTES}
    for name in names:
        store, transform = space(name)
        r = identify(store, "train", "train", args.enrol, transform=transform)
        results["identification"][name] = {
            "top1": r["accuracy"]["top1"], "top5": r["accuracy"]["top5"],
            "probes": r["probes"], "identities": r["gallery_identities"]}
        results["verification"][name] = verification(store, pairs, transform)
        results["attributes"][name] = {a: verification(store, p, transform)
                                       for a, p in attr_pairs.items()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results, names))
    write_report(results, names, Path(args.report))
    return 0


def _f(v, d=3):
    return "n/a" if v is None else f"{v:.{d}f}"


def markdown(results: dict, names) -> str:
    lines = ["| | top-1 (seen ids, new images) | top-5 | verification acc (unseen ids) "
             "[95% CI] | AUC | TAR@FAR 1e-2 |", "|---|---|---|---|---|---|"]
    for n in names:
        i, v = results["identification"][n], results["verification"][n] or {}
        ci = v.get("ci95") or [None, None]
        lines.append(f"| {n} | {_f(i['top1'])} | {_f(i['top5'])} | {_f(v.get('accuracy'), 4)} "
                     f"[{_f(ci[0])}, {_f(ci[1])}] | {_f(v.get('roc_auc'), 4)} | "
                     f"{_f((v.get('tar_at_far') or {}).get('1e-2'))} |")
    lines += ["", "| attribute (first image has it) | " + " | ".join(names) + " | pairs |",
              "|---|" + "---|" * (len(names) + 1)]
    for a in ATTRIBUTES:
        cells, pairs = [], None
        for n in names:
            v = results["attributes"][n][a]
            cells.append("n/a" if v is None else
                         f"{v['accuracy']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]")
            pairs = pairs or (v or {}).get("pairs")
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {pairs or 0} |")
    return "\n".join(lines)


def write_report(results: dict, names, out: Path) -> None:
    from faceprobe.report.html import Markup, ReportWriter, fmt_ci, table

    rw = ReportWriter("Identity adaptation on CelebA",
                      f"MobileFaceNet (arcface.mobilefacenet): raw vs margin head vs fine-tuned; "
                      f"{results['training_images']} training images of "
                      f"{results['training_identities']} identities")
    rows = []
    for n in names:
        i, v = results["identification"][n], results["verification"][n] or {}
        rows.append([n, i["top1"], i["top5"], i["probes"],
                     Markup(fmt_ci(v.get("accuracy", float("nan")), v.get("ci95"))),
                     v.get("roc_auc"), (v.get("tar_at_far") or {}).get("1e-2"), v.get("pairs")])
    rw.section("Identification and verification", table(
        ["space", "top-1 (seen identities, new images)", "top-5", "probes",
         "verification accuracy, unseen identities [95% CI]", "ROC AUC", "TAR@FAR 1e-2",
         "pairs"], rows), markdown(results, names))
    arows = []
    for a in ATTRIBUTES:
        cells = []
        for n in names:
            v = results["attributes"][n][a]
            cells.append("n/a" if v is None else Markup(fmt_ci(v["accuracy"], v["ci95"])))
        arows.append([a, *cells])
    rw.section("Verification by attribute (pairs whose first image has it)",
               table(["attribute", *names], arows))
    page = rw.write(out, results)
    _log(f"report: {page}")


if __name__ == "__main__":
    raise SystemExit(main())
