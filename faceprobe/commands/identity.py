"""``faceprobe verify``, ``faceprobe pairs`` and ``faceprobe identify``: a few lines over
``faceprobe.identity``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="face verification accuracy on a pair list (LFW k-fold protocol)",
        description="Score pairs by the cosine of their stored embeddings. Per fold, the "
                    "threshold is chosen on the other folds and accuracy measured on it; also "
                    "ROC AUC, EER, TAR at FAR 1e-3/1e-2 and accuracy at cosine 0.6/0.7/0.8. "
                    "Pairs whose image has no usable embedding are counted as skipped.")
    p.add_argument("store", metavar="STORE", help="embedding store made by `faceprobe embed`")
    p.add_argument("--pairs", required=True, metavar="FILE",
                   help="LFW pairs.txt, or a CSV fold,path_a,path_b,same (`faceprobe pairs`)")
    p.add_argument("--root", metavar="DIR",
                   help="folder the pair paths are relative to (default: the store's dataset "
                        "root, then the pairs file's folder)")
    p.add_argument("--feature", default="embedding", metavar="GROUP",
                   help="store feature group to compare (default: embedding)")
    p.add_argument("--report", metavar="DIR", help="also write verify.json and roc.png here")
    p.add_argument("--model", metavar="BUNDLE",
                   help="compare in the space of a margin head (`faceprobe train --tasks "
                        "identity --head arcface`) trained on this store's backbone")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "pairs", help="generate seeded same/different-person pairs from identity labels",
        description="Write a pairs CSV (fold,path_a,path_b,same) for `faceprobe verify` from a "
                    "store with identities (e.g. CelebA); with --attribute every pair's first "
                    "image has that attribute, to measure how it hurts verification.")
    p.add_argument("store", metavar="STORE", help="embedding store with identity labels")
    p.add_argument("--out", required=True, metavar="FILE", help="CSV file to write")
    p.add_argument("--n", type=int, default=6000, metavar="N",
                   help="number of pairs, half same-person (default: 6000; fewer if the store "
                        "has fewer distinct pairs)")
    p.add_argument("--attribute", metavar="NAME[=VALUE]",
                   help="only pairs whose first image has this label, e.g. Eyeglasses, "
                        "Wearing_Hat, Blurry, Heavy_Makeup (value default: yes)")
    p.add_argument("--split", metavar="NAME", help="use only this split's images (default: all)")
    p.add_argument("--folds", type=int, default=10, metavar="K",
                   help="folds assigned round-robin within each class (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_pairs)

    p = sub.add_parser(
        "identify", help="top-1/2/3/5 identification accuracy against a gallery of identities",
        description="Enrol one template per identity from the gallery split (mean of normalised "
                    "embeddings) and rank them for every probe. With the same split for both, "
                    "each identity's first images enrol and the rest are probes. Probes whose "
                    "identity is not enrolled are counted as open-set, not as errors.")
    p.add_argument("store", metavar="STORE", help="embedding store with identity labels")
    p.add_argument("--gallery-split", default="train", metavar="NAME",
                   help="split the gallery is built from, or 'all' (default: train)")
    p.add_argument("--probe-split", default="test", metavar="NAME",
                   help="split the probes come from, or 'all' (default: test)")
    p.add_argument("--per-identity", default="one", metavar="one|all|N",
                   help="images enrolled per identity: one, all, or a number (default: one)")
    p.add_argument("--feature", default="embedding", metavar="GROUP",
                   help="store feature group to compare (default: embedding)")
    p.add_argument("--model", metavar="BUNDLE",
                   help="compare in the space of a margin head (`faceprobe train --tasks "
                        "identity --head arcface`) trained on this store's backbone")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=_identify)


def _margin_space(args: argparse.Namespace):
    """(feature group, transform) for ``--model``: the margin head's input group in this store
    and its projection; (``--feature``, None) without a model."""
    if not args.model:
        return args.feature, None
    from faceprobe.embed.store import Store
    from faceprobe.errors import ConfigError
    from faceprobe.heads.bundle import load_bundle

    bundle = load_bundle(args.model)
    if not bundle.is_identity_space:
        raise ConfigError(f"bundle {args.model} holds a {bundle.kind!r} head, which has no "
                          "identity space; train one with `faceprobe train STORE --tasks "
                          "identity --head arcface`")
    bundle.check_store(Store(args.store))
    groups = list(bundle.features)
    if len(groups) != 1:
        raise ConfigError(f"bundle {args.model} maps several groups ({', '.join(groups)}); "
                          "verify and identify compare one: train the head with --features "
                          "GROUP")
    if args.feature not in ("embedding", groups[0]):
        raise ConfigError(f"bundle {args.model} maps {groups[0]!r}, not --feature "
                          f"{args.feature!r}")
    return groups[0], bundle.transform


def _verify(args: argparse.Namespace) -> int:
    from faceprobe.identity.verification import verify

    feature, transform = _margin_space(args)
    r = verify(args.store, args.pairs, root=args.root, feature=feature,
               report_dir=args.report, transform=transform)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"accuracy {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} over {len(r['folds'])} folds "
          f"({r['pairs_used']} pairs used, {r['pairs_skipped']} skipped: "
          f"{r['skipped']['not_in_store']} not in store, {r['skipped']['failed']} failed face)")
    for f in r["folds"]:
        print(f"  fold {f['fold']}: accuracy {f['accuracy']:.4f} at threshold "
              f"{f['threshold']:.4f} (n={f['n']})")
    if r["roc_auc"] is not None:
        tar = ", ".join(f"{v:.4f} at FAR {k}" for k, v in r["tar_at_far"].items())
        print(f"ROC AUC {r['roc_auc']:.4f}, EER {r['eer']:.4f}, TAR {tar}")
    fixed = ", ".join(f"{v['accuracy']:.4f} at {t}" for t, v in r["fixed_thresholds"].items())
    print(f"fixed cosine thresholds: accuracy {fixed}")
    for note in r["notes"]:
        print(f"note: {note}")
    if args.report:
        print(f"report written to {args.report}")
    return 0


def _pairs(args: argparse.Namespace) -> int:
    from faceprobe.embed.store import Store
    from faceprobe.identity.pairs import generate_pairs, write_pairs

    store = Store(args.store)
    pairs = generate_pairs(store, args.n, args.seed, attribute=args.attribute, split=args.split)
    info = write_pairs(pairs, args.out, folds=args.folds, root=store.meta.get("root"))
    info.update(requested=args.n, attribute=args.attribute, split=args.split, seed=args.seed)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    short = f" (asked for {args.n}; the store has no more distinct pairs)" \
        if info["pairs"] < args.n - args.n % 2 else ""
    print(f"wrote {info['pairs']} pairs ({info['same']} same, {info['different']} different, "
          f"{info['folds']} folds) to {info['path']}{short}")
    return 0


def _identify(args: argparse.Namespace) -> int:
    from faceprobe.identity.identification import identify

    feature, transform = _margin_space(args)
    r = identify(args.store, args.gallery_split, args.probe_split, args.per_identity,
                 feature=feature, transform=transform)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    acc = ", ".join(f"{k} {v:.4f}" for k, v in r["accuracy"].items())
    print(f"identification ({r['mode']}, gallery {r['gallery_split']} / probes "
          f"{r['probe_split']}, {r['per_identity']} image(s) per identity): {acc}")
    print(f"gallery: {r['gallery_identities']} identities from {r['gallery_images']} images; "
          f"probes: {r['probes']} scored, {r['probes_open_set']} open-set, "
          f"{r['probes_no_identity']} without identity, {r['probes_failed']} failed face")
    for note in r["notes"]:
        print(f"note: {note}")
    return 0
