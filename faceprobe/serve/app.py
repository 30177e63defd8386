"""The FastAPI app behind ``faceprobe serve``: two plain HTML pages over a small JSON API.

Pages: ``/`` scores photos, ``/store`` browses a store; both are static HTML + JS in ``static/``
(no build step) that only call the JSON API, which FastAPI documents at ``/docs``.

Decisions:
- ``create_app`` does all loading before it returns (bundle, backbone, detector, store table,
  gallery), so a wrong path or an incompatible store fails the command with one line instead of
  the first request.
- Every error is JSON ``{"error": "<one line>"}`` with a 4xx status for what the client can fix
  (400 bad input, 403 path outside the dataset root, 404 unknown row, 413 too large) and 500 with
  the exception's one-line summary for bugs; no handler lets an exception take the server down.
- Upload limits (defaults 32 images of at most 10 MB per request) are checked while the body
  streams in; see ``uploads.py``. Each request's files live in their own ``TemporaryDirectory``,
  removed before the response is sent.
- A batch where some photos cannot be decoded answers 200 with an ``error`` per such photo; only
  a request in which no photo could be decoded answers 400.
- The pages are served with a restrictive Content-Security-Policy (own scripts only, images from
  self/data:), and the JS builds the DOM with ``textContent``, never ``innerHTML``, so a file
  name or a store path cannot inject markup.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from faceprobe import __version__
from faceprobe.embed.images import DEFAULT_MAX_PIXELS
from faceprobe.embed.store import STATUSES, Store
from faceprobe.errors import FaceprobeError
from faceprobe.heads.bundle import load_bundle
from faceprobe.serve.engine import (
    SPLITS,
    BadRequest,
    Forbidden,
    Gallery,
    NotFound,
    Scorer,
    StoreTable,
)
from faceprobe.serve.uploads import UploadError, megabytes, receive_uploads

STATIC = Path(__file__).resolve().parent / "static"
MAX_FILES = 32
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_PAGE_SIZE = 200
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'")

_SCORE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "one part per photo (JPEG, PNG, WebP, TIFF, ...)"}},
    }}},
}


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def create_app(bundle_path: str | os.PathLike, store: str | os.PathLike | None = None,
               gallery: str | os.PathLike | None = None, *, max_files: int = MAX_FILES,
               max_file_bytes: int = MAX_FILE_BYTES,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, warm_up: bool = True,
               weights=None) -> FastAPI:
    """Load the bundle (and optionally a store to browse and a gallery store), return the app.
    ``weights``: the backbones' files when the recorded ones moved (see ``faceprobe score``)."""
    if not (STATIC / "index.html").is_file():
        raise FaceprobeError(f"the web pages are missing from {STATIC}; reinstall faceprobe")
    bundle = load_bundle(bundle_path)
    gal = Gallery(Store(gallery), bundle) if gallery is not None else None
    scorer = Scorer(bundle, gallery=gal, max_pixels=max_pixels, warm_up=warm_up, weights=weights)
    table = StoreTable(Store(store), bundle, scorer.predictor, max_pixels) \
        if store is not None else None
    max_total = max_files * max_file_bytes + 1024 * 1024  # + room for the multipart framing

    app = FastAPI(
        title="faceprobe serve", version=__version__,
        description="Score photos with a faceprobe model bundle and browse an embedding store. "
                    f"Limits: {max_files} photos of at most {megabytes(max_file_bytes)} each per "
                    "request. Errors are JSON `{\"error\": \"...\"}`.")
    app.state.bundle, app.state.scorer, app.state.table = bundle, scorer, table
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return _error(exc.status, exc.message)

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest):
        return _error(400, str(exc))

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return _error(403, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return _error(404, str(exc))

    @app.exception_handler(FaceprobeError)
    async def _faceprobe_error(request: Request, exc: FaceprobeError):
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                 for e in exc.errors()]
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        # the traceback is logged by the server as the exception propagates past this handler
        text = " ".join(str(exc).split())[:300]
        return _error(500, f"internal error ({type(exc).__name__}: {text}); see the server log")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        if not request.url.path.startswith(("/docs", "/redoc")):
            response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/", include_in_schema=False)
    async def score_page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/store", include_in_schema=False)
    async def store_page():
        return FileResponse(STATIC / "store.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/health", summary="Liveness check")
    async def health() -> dict:
        return {"ok": True}

    @app.get("/api/info", summary="The model, the store and the limits the pages work with")
    async def info() -> dict:
        p = scorer.predictor
        return {
            "version": __version__,
            "bundle": {"path": str(bundle.path), "name": Path(bundle.path).name,
                       "head": bundle.kind, "backbone": bundle.backbone, "tasks": bundle.tasks,
                       "vocabularies": {t: p.vocab[t] for t in p.categorical}},
            "store": table.info() if table is not None else None,
            "gallery": {"path": str(gal.path), "identities": len(gal.names)}
            if gal is not None else None,
            "limits": {"max_files": max_files, "max_file_bytes": max_file_bytes,
                       "max_pixels": max_pixels},
            "statuses": list(STATUSES), "splits": list(SPLITS),
        }

    @app.post(
        "/api/score", summary="Score photos: every face with box, landmarks and predictions",
        description="Send photos as multipart/form-data, field `files`, one part per photo; all "
                    "are embedded and scored in one pass. Each image comes back with its faces "
                    "(box x1,y1,x2,y2 and 5 landmarks in image pixels, after EXIF rotation; per "
                    "task the predicted label and its probability, or years for age; with a "
                    "gallery the closest identities by cosine similarity) or an `error`. "
                    "400: no photo decodable / bad request; 413: over the size limits.",
        openapi_extra={"requestBody": _SCORE_BODY})
    async def score(request: Request,
                    preview: bool = Query(True, description="include a JPEG preview (data URL, "
                                          "at most 800 px) of each decoded photo")) -> Any:
        with tempfile.TemporaryDirectory(prefix="faceprobe-serve-") as tmp:
            uploads = await receive_uploads(request, Path(tmp), max_files=max_files,
                                            max_file_bytes=max_file_bytes,
                                            max_total_bytes=max_total)
            if not uploads:
                raise UploadError(400, "no photo in the request; send them as multipart/form-data"
                                       " parts named 'files'")
            result = await run_in_threadpool(scorer.score, uploads, preview)
        decoded = [im for im in result["images"] if im["width"] is not None]
        if not decoded:
            msgs = "; ".join(im["error"] for im in result["images"][:3])
            more = len(result["images"]) - 3
            return _error(400, msgs + (f"; and {more} more" if more > 0 else ""),
                          images=result["images"])
        return result

    def _table() -> StoreTable:
        if table is None:
            raise NotFound("no store is loaded; start the server with --store STORE")
        return table

    @app.get("/api/rows", summary="A page of the store's rows, filtered")
    async def rows(
        status: str | None = Query(None, description="usable, failed, or one status: "
                                   + ", ".join(STATUSES)),
        task: str | None = Query(None, description="the task true/pred/misclassified refer to"),
        true: str | None = Query(None, description="true label (a class of task)"),
        pred: str | None = Query(None, description="predicted label (a class of task)"),
        misclassified: bool = Query(False, description="only usable rows whose predicted "
                                    "label differs from the true one (task required)"),
        split: str = Query("all", description="all (every row), or train/val/test: the "
                           "bundle's recorded split, as `faceprobe evaluate --split`"),
        page: int = Query(1, ge=1, description="page number, from 1"),
        page_size: int = Query(48, ge=1, le=MAX_PAGE_SIZE, description="rows per page"),
    ) -> dict:
        t = _table()
        idx = t.filter(status=status or None, task=task or None, true=true or None,
                       pred=pred or None, misclassified=misclassified, split=split)
        total = len(idx)
        pages = max(1, -(-total // page_size))
        sel = idx[(page - 1) * page_size: page * page_size]
        return {"total": total, "page": page, "page_size": page_size, "pages": pages,
                "rows": [t.row(int(i)) for i in sel]}

    @app.get("/api/rows/{shard}/{index}", summary="One row in full: labels, predictions, "
             "box, landmarks, status message, image size")
    async def row(shard: int, index: int) -> dict:
        t = _table()
        pos = t.position(shard, index)
        res = t.row(pos, full=True)
        size = await run_in_threadpool(t.image_size, pos)
        res["image_size"] = list(size) if size else None
        return res

    @app.get("/api/thumb/{shard}/{index}", summary="A row's face (or whole image) as JPEG",
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumb(shard: int, index: int,
                    full: bool = Query(False, description="the whole image (at most 720 px) "
                                       "instead of the face crop")) -> Response:
        t = _table()
        pos = t.position(shard, index)
        data = await run_in_threadpool(t.thumb, pos, full)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    return app
