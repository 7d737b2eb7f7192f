"""The Starlette application of the web demo: one static page and a small JSON API.

Routes (all answers but the page, images and zips are JSON; errors are ``{"error": message}``
with a 4xx status, or 503 + ``Retry-After`` when busy):

- ``GET /``: the page (``static/index.html``).
- ``GET /api/info``: tasks, registered datasets with a vocabulary, example images, limits.
- ``GET /examples/{name}``: one of the example images (the config's test images on disk).
- ``POST /vocabulary`` (form: ``vocab`` or ``dataset``, ``embed`` = 0|1): the parsed classes
  and whether their text embeddings are cached; with ``embed=1`` embeds them first.
- ``POST /segment`` (multipart: ``image``, ``vocab`` or ``dataset``, ``task``): segments, the
  overlay as base64 PNG and a ``download`` link to the result files.
- ``GET /results/{id}.zip``: the machine-readable result files of one ``/segment`` answer.
"""
import json
import logging
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .service import WEB_TASKS, RequestError, SegmentationService

__all__ = ["create_app", "BodySizeLimit"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
RETRY_AFTER_S = 5
# bodies up to this many times the limit are read (and dropped) before the 413 is sent
DRAIN_FACTOR = 8


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 without being read whole
    (checked from Content-Length when sent, else while the body streams in)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self, size_text: str) -> bytes:
        return json.dumps({"error": f"upload too large ({size_text}); the limit is "
                                    f"{self.max_bytes / 2**20:.1f} MB"}).encode()

    async def _send_413(self, send, body: bytes):
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def _drain(self, receive, limit: int) -> None:
        """Reads and drops the rest of the body (up to ``limit`` bytes), so that the client,
        still sending, reads the 413 instead of a reset connection."""
        dropped = 0
        while dropped <= limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            dropped += len(message.get("body", b""))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        drain_limit = DRAIN_FACTOR * self.max_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            if int(length) <= drain_limit:
                await self._drain(receive, drain_limit)
            await self._send_413(send, self._message(f"{int(length) / 2**20:.1f} MB"))
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(message.get("more_body", False))
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as e:
            if not started:
                if e.args[0]:
                    await self._drain(receive, drain_limit)
                await self._send_413(send, self._message(f"over {received / 2**20:.1f} MB"))


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(service: SegmentationService) -> Starlette:
    """The demo's ASGI app around one loaded ``SegmentationService``."""

    async def form_of(request: Request):
        try:
            return await request.form(max_files=1, max_fields=16)
        except HTTPException as e:  # malformed multipart, too many parts
            raise RequestError(400, f"could not read the form: {e.detail}") from e

    def text_field(form, key: str) -> str:
        value = form.get(key)
        if value is None:
            return ""
        if isinstance(value, UploadFile):
            raise RequestError(400, f"form field '{key}' must be text, not a file")
        return str(value)

    def vocabulary_of(form):
        return service.vocabulary(text_field(form, "vocab"), text_field(form, "dataset"))

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def info(request: Request):
        return JSONResponse(service.info())

    async def health(request: Request):
        return JSONResponse({"ok": True, "pending": service.gate.pending})

    async def example(request: Request):
        name = request.path_params["name"]
        data = service.example_bytes(name)
        media = "image/png" if name.lower().endswith(".png") else "image/jpeg"
        return Response(data, media_type=media)

    async def vocabulary(request: Request):
        form = await form_of(request)
        vocab = vocabulary_of(form)
        if text_field(form, "embed") in ("1", "true", "yes"):
            return JSONResponse(await anyio.to_thread.run_sync(service.embed, vocab))
        return JSONResponse({"classes": vocab.as_json(), "cached": service.is_cached(vocab)})

    async def segment(request: Request):
        form = await form_of(request)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise RequestError(400, "no image: send multipart/form-data with a file field "
                                    "'image', a 'vocab' (or 'dataset') and a 'task'")
        task = text_field(form, "task").strip() or service.default_task
        if task not in WEB_TASKS:
            raise RequestError(400, f"unknown task '{task}': choose one of "
                                    f"{', '.join(WEB_TASKS)}")
        vocab = vocabulary_of(form)
        data = await upload.read()
        answer = await anyio.to_thread.run_sync(service.segment, data, upload.filename or "",
                                                vocab, task)
        return JSONResponse(answer)

    async def result(request: Request):
        data = service.result_zip(request.path_params["result_id"])
        return Response(data, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="dataseg_'
                                   f'{request.path_params["result_id"]}.zip"'})

    async def request_error(request: Request, exc: RequestError):
        if exc.status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    async def unexpected_error(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/healthz", health),
        Route("/examples/{name}", example),
        Route("/vocabulary", vocabulary, methods=["POST"]),
        Route("/segment", segment, methods=["POST"]),
        Route("/results/{result_id}.zip", result),
    ]
    app = Starlette(routes=routes, exception_handlers={
        RequestError: request_error, HTTPException: http_error, Exception: unexpected_error})
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_upload_bytes)
    return app
