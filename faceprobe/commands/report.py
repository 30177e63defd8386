"""`faceprobe compare` and `faceprobe demo`."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("compare", help="put several evaluation reports side by side",
                       description="Headline metrics of several `evaluate --report` directories "
                                   "in one table; * marks the best per row.")
    p.add_argument("reports", nargs="+", metavar="REPORT",
                   help="report directories (or their metrics.json files)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_compare)

    p = sub.add_parser("demo", help="run the whole pipeline on the bundled sample (offline)",
                       description="Embed the bundled 300-face MTFL sample, train and tune heads, "
                                   "evaluate them and write an HTML report.")
    p.add_argument("--out", default="reports/demo", help="output directory (default reports/demo)")
    p.add_argument("--trials", type=int, default=6, help="tuning trials (default 6)")
    p.set_defaults(func=_demo)


def _compare(args) -> int:
    from faceprobe.report.compare import compare, format_table

    result = compare(args.reports)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


def _demo(args) -> int:
    from faceprobe.pipelines.demo import run_demo

    run_demo(args.out, trials=args.trials)
    return 0
