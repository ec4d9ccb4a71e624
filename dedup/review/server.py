"""`dedup review`: the run's pairs and groups in a local web app (Starlette on uvicorn), labels written to
RUN_DIR/labels.parquet as they are made.

What it will serve, and to whom:
- pages and the package's own static files, by names it knows (a whitelist, never a path from the request);
- thumbnails, and a pair's aligned overlay (review/overlay.py), by row numbers of groups.parquet, read from the
  rows' input shards: the only files it opens are the run's own inputs, whatever a request names;
- labels only by a POST that carries the token the page was served with, as JSON, from this origin: a form on
  another site can neither read the token nor send that header;
- only to requests addressed to the loopback name it listens on (DNS rebinding), unless told to listen on
  another address, which it then says aloud.
"""

from __future__ import annotations

import errno
import json
import secrets
import socket
from importlib import resources
from pathlib import Path

from dedup.errors import InputError
from dedup.io.imaging import UnreadableImage
from dedup.io.labels import NAMEABLE, LabelBook
from dedup.io.runfolder import RunFolder
from dedup.progress import SILENT, Reporter
from dedup.review.images import Thumbnails, sample_image
from dedup.review.overlay import aligned_pair, png
from dedup.review.queue import PairFilter, ReviewData

STATIC = {  # name -> media type: all the files the app serves from the package
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_HEADER = "x-dedup-token"
MAX_PAGE = 200


def static_text(name: str) -> str:
    return resources.files("dedup.review").joinpath("static", name).read_text(encoding="utf-8")


def _int(value: str | None, default: int, name: str, low: int = 0, high: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as error:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from error
    return max(low, number if high is None else min(high, number))


def _float(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError as error:
        raise ValueError(f"{name} must be a number, not {value!r}") from error


def create_app(data: ReviewData, thumbnails: Thumbnails, token: str, allowed_hosts: set[str] | None):
    """The Starlette app. `allowed_hosts`: the Host headers to answer (None: any, when listening beyond
    loopback)."""
    from starlette.applications import Starlette
    from starlette.datastructures import Headers, MutableHeaders
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    page = static_text("index.html").replace("{{TOKEN}}", token).replace("{{RUN}}", data.folder.root.name)
    security_headers = {
        "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }

    class Guard:
        """Refuses what the module docstring lists, before any route runs; adds the security headers."""

        def __init__(self, app):
            self.app = app

        def refusal(self, scope) -> Response | None:
            headers = Headers(scope=scope)
            host = headers.get("host", "")
            if allowed_hosts is not None and host not in allowed_hosts:
                return PlainTextResponse(f"this server answers only {sorted(allowed_hosts)}", status_code=403)
            method = scope["method"]
            if method not in ("GET", "HEAD", "POST"):
                return PlainTextResponse("method not allowed", status_code=405)
            if method == "POST":
                origin = headers.get("origin")
                if origin is not None and origin != f"http://{host}":
                    return PlainTextResponse("cross-origin requests cannot label", status_code=403)
                if not secrets.compare_digest(headers.get(TOKEN_HEADER, ""), token):
                    return PlainTextResponse("labels are written only from the review page", status_code=403)
                if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                    return PlainTextResponse("labels are sent as application/json", status_code=415)
            return None

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            refused = self.refusal(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return

            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    response_headers = MutableHeaders(scope=message)
                    for name, value in security_headers.items():
                        response_headers.setdefault(name, value)
                await send(message)

            await self.app(scope, receive, send_with_headers)

    def index(request: Request) -> Response:
        return HTMLResponse(page)

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        return Response(static_text(name), media_type=STATIC[name])

    def bad_request(error: Exception) -> Response:
        return JSONResponse({"error": str(error)}, status_code=400)

    def summary(request: Request) -> Response:
        return JSONResponse(data.summary())

    def pairs(request: Request) -> Response:
        query = request.query_params
        try:
            chosen = PairFilter(
                signal=query.get("signal") or None,
                relation=query.get("relation") or None,
                low=_float(query.get("low"), "low"),
                high=_float(query.get("high"), "high"),
                unlabelled=query.get("unlabelled") in ("1", "true"),
                group=_int(query.get("group"), -1, "group", low=-1),
            )
            if chosen.group == -1:
                chosen.group = None
            offset = _int(query.get("offset"), 0, "offset")
            limit = _int(query.get("limit"), 24, "limit", low=1, high=MAX_PAGE)
        except ValueError as error:
            return bad_request(error)
        return JSONResponse(data.pairs_page(chosen, offset, limit))

    def groups(request: Request) -> Response:
        try:
            offset = _int(request.query_params.get("offset"), 0, "offset")
            limit = _int(request.query_params.get("limit"), 10, "limit", low=1, high=MAX_PAGE)
        except ValueError as error:
            return bad_request(error)
        return JSONResponse(data.groups_page(offset, limit))

    def thumb(request: Request) -> Response:
        row = request.path_params["row"]
        if not 0 <= row < data.rows:
            return PlainTextResponse("no such sample", status_code=404)
        try:
            jpeg = thumbnails.get(*data.place(row))
        except (UnreadableImage, OSError, ValueError) as error:
            return PlainTextResponse(f"cannot read this sample's image: {error}", status_code=410)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def overlay(request: Request) -> Response:
        first, second = request.path_params["a"], request.path_params["b"]
        if not (0 <= first < data.rows and 0 <= second < data.rows):
            return PlainTextResponse("no such sample", status_code=404)
        try:
            images = [sample_image(*data.place(row)) for row in (first, second)]
        except (UnreadableImage, OSError, ValueError) as error:
            return PlainTextResponse(f"cannot read this pair's images: {error}", status_code=410)
        picture = aligned_pair(*images)
        if picture is None:
            return PlainTextResponse(
                "these two do not align: too few keypoints agree on one transform", status_code=422
            )
        return Response(png(picture), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def label(request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
            pair, verdict, relation = int(payload["pair"]), payload.get("label"), payload.get("relation")
            if (verdict is None) == (relation is None):
                raise ValueError("send a label (duplicate or distinct) or a relation, one of them")
            if verdict is not None and verdict not in ("duplicate", "distinct"):
                raise ValueError(f"label must be duplicate or distinct, not {verdict!r}")
            if relation is not None and relation not in NAMEABLE:
                raise ValueError(f"relation must be one of {', '.join(NAMEABLE)}, not {relation!r}")
        except (ValueError, KeyError, TypeError) as error:
            return bad_request(error)
        try:
            record = data.label(pair, None if verdict is None else verdict == "duplicate", relation)
        except InputError as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        return JSONResponse({"pair": record, "labelled": len(data.book)})

    async def undo(request: Request) -> Response:
        record = data.undo()
        return JSONResponse({"pair": record, "labelled": len(data.book)})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static),
            Route("/api/summary", summary),
            Route("/api/pairs", pairs),
            Route("/api/groups", groups),
            Route("/thumb/{row:int}", thumb),
            Route("/overlay/{a:int}/{b:int}", overlay),
            Route("/api/label", label, methods=["POST"]),
            Route("/api/undo", undo, methods=["POST"]),
        ],
        middleware=[Middleware(Guard)],
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or an InputError that says what to do when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # a response goes out as two writes (head, body): without this, Nagle holds the body until the browser's
    # delayed ACK of the head, 40 ms on every request of a kept-alive connection (accepted sockets inherit it)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} on {host} is in use (another dedup review?): pass --port with another number, "
                "or --port 0 for any free one"
            ) from error
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    embeddings: str | Path | None = None,
    reporter: Reporter = SILENT,
    near_miss_sample: int = 20_000,
) -> None:
    """Load the run, listen, print the address, and serve until interrupted."""
    import uvicorn

    folder = RunFolder(run_dir)
    if not folder.root.is_dir():
        raise InputError(f"run folder {folder.root} does not exist")
    book = LabelBook(folder.labels)
    data = ReviewData(folder, book, Path(embeddings) if embeddings else None, near_miss_sample)
    if data.labels_elsewhere:
        reporter.info(
            f"review: {data.labels_elsewhere} of {len(book)} labels name pairs this run does not show (a re-run with "
            f"another threshold?): they stay in {folder.labels}, and select still applies those whose samples "
            "are in the run"
        )
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    loopback = host in LOOPBACK
    allowed = {f"{name}:{bound_port}" for name in ("127.0.0.1", "localhost", "[::1]")} if loopback else None
    if not loopback:
        reporter.warn(
            f"review: listening on {host}, not only this machine: anyone who can reach it can see the run's images "
            "and write labels"
        )
    shown_host = f"[{host}]" if ":" in host else host
    reporter.info(
        f"review: {data.found_pairs} pairs found and {len(data.a) - data.found_pairs} near misses, "
        f"{len(data.group_ids)} groups; {len(book)} labels in {folder.labels}"
    )
    print(
        f"review: http://{shown_host}:{bound_port}/  (Ctrl-C stops it; labels are saved as they are made)", flush=True
    )
    app = create_app(data, Thumbnails(), secrets.token_urlsafe(24), allowed)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
