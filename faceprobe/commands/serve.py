"""``faceprobe serve``: the local web app (score photos, browse a store) over uvicorn.

fastapi, uvicorn and python-multipart are the optional ``serve`` extra: they are imported only
when the command runs, so the rest of the CLI works without them.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import sys

from faceprobe.errors import ConfigError

_NEEDS = ("fastapi", "uvicorn", "python_multipart")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="local web app: score photos and browse a store",
        description="Serve two pages on this machine: '/' scores dropped photos (every face with "
                    "its box, landmarks and per-task predictions) and '/store' browses a store's "
                    "faces with filters (status, true/predicted label, misclassified). The JSON "
                    "API behind them is documented at '/docs'. Needs the serve extra: "
                    "pip install 'faceprobe[serve]'.")
    p.add_argument("model", metavar="MODEL", help="model bundle directory (from `faceprobe train`)")
    p.add_argument("--store", metavar="STORE",
                   help="embedding store to browse on /store; must be embedded with the bundle's "
                        "backbone (default: no store page)")
    p.add_argument("--gallery", metavar="STORE",
                   help="store of known faces: each scored face also lists the closest "
                        "identities by cosine similarity (rows without an identity label are "
                        "listed under their file name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 "
                        "lets anyone who can reach this machine upload photos and see the "
                        "store's images)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    p.add_argument("--weights", default=None,
                   help="the backbone weights file(s), comma-separated in the bundle recipe's "
                        "backbone order, when the recorded files are not where they were")
    p.add_argument("--max-files", type=int, default=32, metavar="N",
                   help="most photos accepted in one request (default 32)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                   help="largest photo accepted, in MB (default 10)")
    p.set_defaults(func=cmd_serve)


def _check_installed() -> None:
    missing = []
    for name in _NEEDS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.replace("_", "-"))
    if missing:
        raise ConfigError(f"`faceprobe serve` needs {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed; "
                          "pip install 'faceprobe[serve]'")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    _check_installed()
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_files < 1 or args.max_upload_mb <= 0:
        raise ConfigError("--max-files and --max-upload-mb must be positive")
    import uvicorn

    from faceprobe.serve.app import create_app

    print("faceprobe serve: loading the model"
          + (", the store" if args.store else "") + (" and the gallery" if args.gallery else "")
          + " ...", file=sys.stderr, flush=True)
    app = create_app(args.model, store=args.store, gallery=args.gallery, weights=args.weights,
                     max_files=args.max_files,
                     max_file_bytes=int(args.max_upload_mb * 1024 * 1024))
    if not _is_loopback(args.host):
        print(f"faceprobe serve: warning: listening on {args.host}, not only this machine; "
              "anyone who can reach it can upload photos and see the store's images",
              file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"faceprobe serve: http://{shown}:{args.port}/ (store page /store, API docs /docs); "
          "Ctrl+C stops it", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
