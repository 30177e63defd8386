"""Per-attribute accuracy on CelebA: the identity embedding alone vs every feature group.

    python bench/feature_groups.py                                  # ../shared/data/celeba
    python bench/feature_groups.py --root PATH --limit 20000 --head logreg

Embeds CelebA once with dlib.resnet and ``--features embedding,geometry68,geometry5,hog``
(cached in --workdir, resumed if interrupted), then for each feature set (``embedding``; each
extra group alone; all groups) fits one head per attribute on an identity-disjoint split (no
person on both sides: faceprobe's seeded split grouped by identity, the official partition
ignored) and reports test accuracy per attribute, the majority-class baseline, and the mean
over the 40 attributes. The target: ``Smiling`` >= 0.92 with all groups while
``Male`` stays >= 0.985. Results go to --json (default bench/results/feature_groups.json).

    python bench/feature_groups.py --head logreg,svm --sets geometry68,emb+geo68+hog \
        --refresh geometry68 --fit-box

``--refresh GROUPS`` recomputes those extra groups for every usable row with the installed
faceprobe.embed.features from the stored image path, box and points (what ``--add-features``
would compute), cached in --workdir by the groups' provenance, so a store embedded by an older
faceprobe is compared with the current geometry68 on the very same detections and embeddings.
``--fit-box`` prints the MTCNN-box -> dlib-HOG-box mapping (features.BOX_MAP) fitted on the
stored faces and how often the HOG detector finds each face.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faceprobe  # noqa: E402,F401  (sets the Keras backend)

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("embedding", "geometry68", "geometry5", "hog")
SETS = {"embedding": ["embedding"], "geometry68": ["geometry68"], "geometry5": ["geometry5"],
        "hog": ["hog"], "emb+geo68+hog": ["embedding", "geometry68", "hog"], "all": list(GROUPS)}


def embed(root: Path, store: Path, limit: int | None, workers: int | None) -> None:
    from faceprobe.data.registry import get_reader
    from faceprobe.embed.pipeline import embed_dataset, format_summary

    reader = get_reader("celeba", str(root))
    t0 = time.perf_counter()
    s = embed_dataset(reader.records(), store, "dlib.resnet", features=GROUPS, limit=limit,
                      workers=workers, vocabularies=reader.vocabularies(), dataset="celeba",
                      root=str(root.resolve()), shard_size=1000,
                      detector="mtcnn")  # the README's numbers; geometry68 uses dlib's own box
    print(format_summary(s), f"({time.perf_counter() - t0:.0f}s)", flush=True)


def _load_image(path: str) -> np.ndarray:
    from faceprobe.embed.images import load_image

    return load_image(path)


def refresh(store_path: Path, data, groups: list[str], workdir: Path) -> dict:
    """Recompute the extra ``groups`` of every row of ``data`` (in place) with the current
    faceprobe.embed.features; cached in ``workdir`` by the groups' provenance."""
    import hashlib

    from faceprobe.embed import features as F
    from faceprobe.embed.store import Store

    meta = Store(store_path).meta
    prov = F.provenance(groups)
    key = hashlib.sha256(json.dumps([prov, data.row_id.tolist()], sort_keys=True).encode()
                         ).hexdigest()[:16]
    cache = workdir / f"refresh-{'-'.join(groups)}-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        feats = {g: z[g] for g in groups}
        sources = z["sources"]
    else:
        t0 = time.perf_counter()
        feats = {g: np.zeros((len(data), F.EXTRA_DIMS[g]), np.float32) for g in groups}
        sources = np.empty(len(data), object)
        img_path, img = None, None
        config = _backbone_config(meta)
        for i in range(len(data)):
            row = {"box": data.box[i], "landmarks_detected": data.landmarks_detected[i],
                   "landmarks_dataset": data.landmarks_dataset[i], "status": data.status[i]}
            if data.path[i] != img_path:
                img_path, img = data.path[i], _load_image(data.path[i])
            f = F.compute(groups, img, row, config)
            for g in groups:
                feats[g][i] = f[g]
            if "geometry68" in groups:
                box, _ = F.face_inputs(row)
                sources[i] = F.shape68_box(img, box)[1]
        sources = sources.astype(str)
        np.savez(cache, sources=sources, **feats)
        print(f"refreshed {', '.join(groups)} of {len(data)} rows "
              f"({time.perf_counter() - t0:.0f}s) -> {cache.name}", flush=True)
    for g in groups:
        if not np.isfinite(feats[g]).all():
            raise SystemExit(f"refreshed {g} has non-finite values")
        data.X[g] = feats[g]
    out = {"provenance": prov}
    if "geometry68" in groups:
        src, n = np.unique(sources, return_counts=True)
        out["geometry68_box_source"] = {str(k): int(v) for k, v in zip(src, n, strict=True)}
        print("geometry68 box source:", out["geometry68_box_source"], flush=True)
    return out


def _backbone_config(meta: dict):
    from faceprobe.embed.backbones.base import BackboneConfig

    return BackboneConfig.from_dict(meta["backbone_config"])


def fit_box(data) -> dict:
    """Fit features.BOX_MAP: HOG-box centre offset (in detector-box widths/heights) and side
    (in sqrt(w*h) of the detector box), medians over faces whose raw boxes overlap (IoU >= 0.3)."""
    from faceprobe.embed import features as F

    rows, found, t0 = [], 0, time.perf_counter()
    img_path, img = None, None
    for i in range(len(data)):
        box = data.box[i].astype(np.float64)
        if not np.isfinite(box).all():
            continue
        if data.path[i] != img_path:
            img_path, img = data.path[i], _load_image(data.path[i])
        dets = F.hog_boxes(img, box)
        if not len(dets):
            continue
        ious = [F.iou(d, box) for d in dets]
        k = int(np.argmax(ious))
        if ious[k] < 0.3:
            continue
        found += 1
        d = dets[k]
        w, h = box[2] - box[0], box[3] - box[1]
        rows.append((((d[0] + d[2]) - (box[0] + box[2])) / 2 / w,
                     ((d[1] + d[3]) - (box[1] + box[3])) / 2 / h,
                     np.sqrt((d[2] - d[0]) * (d[3] - d[1])) / np.sqrt(w * h), ious[k]))
    a = np.array(rows)
    med = np.median(a, axis=0)
    q = np.percentile(a, [25, 75], axis=0)
    fit = {"dx": round(float(med[0]), 3), "dy": round(float(med[1]), 3),
           "scale": round(float(med[2]), 3)}
    print(f"HOG box found overlapping {found}/{len(data)} faces ({time.perf_counter() - t0:.0f}s); "
          f"fit {fit}; IQR dx {q[:, 0].round(3)}, dy {q[:, 1].round(3)}, scale "
          f"{q[:, 2].round(3)}; raw IoU median {med[3]:.3f}", flush=True)
    return {"fit": fit, "found": found, "rows": len(data),
            "iqr": {"dx": q[:, 0].tolist(), "dy": q[:, 1].tolist(), "scale": q[:, 2].tolist()}}


def evaluate(store_path: Path, feature_sets: dict[str, list[str]], heads: list[str], seed: int,
             test_fraction: float, refresh_groups: list[str] = (), workdir: Path | None = None,
             do_fit_box: bool = False) -> dict:
    from faceprobe.data.celeba import ATTRIBUTES
    from faceprobe.embed.store import Store
    from faceprobe.heads.baselines import make_head
    from faceprobe.heads.evaluate import compute_metrics
    from faceprobe.heads.splits import make_split

    store = Store(store_path)
    tasks = [a for a in ATTRIBUTES if a in store.vocabularies]
    data = store.load(features=list(dict.fromkeys(g for gs in feature_sets.values() for g in gs)),
                      tasks=tasks)
    extra_info = {}
    if do_fit_box:
        extra_info["fit_box"] = fit_box(data)
    if refresh_groups:
        extra_info["refresh"] = refresh(store_path, data, list(refresh_groups), workdir)
    split = make_split(data, seed=seed, val_fraction=0.0, test_fraction=test_fraction,
                       official=False)
    train, test = data.subset(split.train), data.subset(split.test)
    shared = np.intersect1d(train.identity[train.identity != ""],
                            test.identity[test.identity != ""]).size
    print(split.description["text"], f"(identities on both sides: {shared})", flush=True)
    # an attribute needs both classes in train (a small --limit can leave one)
    tasks = [t for t in tasks if np.unique(train.y[t][train.y[t] >= 0]).size > 1
             and (test.y[t] >= 0).any()]
    majority = {}
    for t in tasks:
        ytr, yte = train.y[t], test.y[t]
        top = np.bincount(ytr[ytr >= 0]).argmax()
        majority[t] = float((yte[yte >= 0] == top).mean())
    results = {"split": split.description["text"], "identities_shared": int(shared),
               "rows": {"train": len(train), "test": len(test)}, "heads": heads,
               "majority": majority, "sets": {}, **extra_info}
    for head in heads:
        for name, groups in feature_sets.items():
            t0 = time.perf_counter()
            model = make_head(head, tasks=tasks, features=groups, class_weighting="none",
                              seed=seed)
            model.fit(train, vocabularies=store.vocabularies)
            out = model.predict_outputs({g: test.X[g] for g in groups})
            m = compute_metrics(test.y, out, tasks)["tasks"]
            acc = {t: m[t]["accuracy"] for t in tasks}
            key = name if len(heads) == 1 else f"{name}/{head}"
            results["sets"][key] = {"groups": groups, "head": head, "accuracy": acc,
                                    "mean": float(np.mean(list(acc.values()))),
                                    "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{key:>20}: mean {results['sets'][key]['mean']:.4f}  Smiling "
                  f"{acc.get('Smiling', float('nan')):.4f}  Male "
                  f"{acc.get('Male', float('nan')):.4f}  ({results['sets'][key]['seconds']}s)",
                  flush=True)
    return results


def print_table(res: dict) -> None:
    names = list(res["sets"])
    print("\n" + f"{'attribute':<22}{'majority':>9}" + "".join(f"{n[:11]:>12}" for n in names))
    for t, base in res["majority"].items():
        print(f"{t:<22}{base:>9.3f}"
              + "".join(f"{res['sets'][n]['accuracy'][t]:>12.3f}" for n in names))
    print(f"{'mean':<22}{np.mean(list(res['majority'].values())):>9.3f}"
          + "".join(f"{res['sets'][n]['mean']:>12.3f}" for n in names))
    for key in [k for k in res["sets"] if k.split("/")[0] == "all"]:
        allg = res["sets"][key]
        smile, male = allg["accuracy"].get("Smiling"), allg["accuracy"].get("Male")
        ok = smile is not None and male is not None and smile >= 0.92 and male >= 0.985
        print(f"\nacceptance ({key}): Smiling {smile:.4f} >= 0.92, Male {male:.4f} >= 0.985: "
              + ("PASS" if ok else "FAIL"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "celeba")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "results" / "fg-work")
    ap.add_argument("--limit", type=int, default=None, help="embed only the first N images")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--head", default="logreg",
                    help="faceprobe head kind(s), comma-separated (default logreg)")
    ap.add_argument("--sets", default=None,
                    help="feature sets to evaluate, comma-separated names (default: all of "
                         + ", ".join(SETS) + ")")
    ap.add_argument("--refresh", default="",
                    help="extra groups to recompute with the current faceprobe (e.g. geometry68)")
    ap.add_argument("--fit-box", action="store_true",
                    help="fit and print the MTCNN -> dlib HOG box mapping (features.BOX_MAP)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "feature_groups.json")
    args = ap.parse_args()
    if not args.root.is_dir():
        print(f"no CelebA at {args.root}; pass --root", file=sys.stderr)
        return 2
    store = args.workdir / "celeba-dlib-groups"
    embed(args.root, store, args.limit, args.workers)
    names = SETS if args.sets is None else [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        ap.error(f"unknown --sets {', '.join(unknown)}; choose from {', '.join(SETS)}")
    sets = {n: SETS[n] for n in names}
    heads = [h.strip() for h in args.head.split(",") if h.strip()]
    res = evaluate(store, sets, heads, args.seed, args.test_fraction,
                   [g for g in args.refresh.split(",") if g], args.workdir, args.fit_box)
    print_table(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
