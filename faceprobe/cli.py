"""The ``faceprobe`` command: parse arguments, call the API, turn FaceprobeError into one line."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from faceprobe import __version__
from faceprobe.commands import COMMAND_MODULES
from faceprobe.errors import FaceprobeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceprobe",
        description="Embed faces once, then train, tune, evaluate and score attribute heads on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"faceprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # a user reads what to do, not which line of faceprobe raised it
    return f"faceprobe: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    saved, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        result = args.func(args)
    except FaceprobeError as exc:
        print(f"faceprobe: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # output piped into `head` and closed early: not an error of the run
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("faceprobe: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = saved  # main() called as a function hands the process back
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
