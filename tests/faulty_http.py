"""An HTTP server on 127.0.0.1 that serves a folder's files badly on purpose, for the remote-shard tests.

Each request draws, from a seeded generator, whether it is answered with 503 or 429, stalls before its body, or
has its connection dropped part way through the body; the rest are served whole. Ranges (`Range: bytes=N-M`) are
honoured or ignored as asked. A file whose name starts with `dead` always gets 503. The server counts requests,
refuses all after `max_requests`, and shuts itself down after `lifetime_s` whatever happens to the test.
"""

from __future__ import annotations

import http.server
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Faults:
    unavailable: float = 0.10  # 503
    throttled: float = 0.08  # 429
    dropped: float = 0.15  # connection closed part way through the body
    stalled: float = 0.04  # nothing sent for stall_s before the body
    stall_s: float = 1.5
    ranges: bool = True
    seed: int = 0
    max_requests: int = 3_000
    lifetime_s: float = 600.0
    counts: dict = field(default_factory=dict)


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    folder: Path
    faults: Faults
    rng: random.Random
    lock: threading.Lock

    def log_message(self, *args) -> None:
        pass

    def count(self, what: str) -> None:
        with self.lock:
            self.faults.counts[what] = self.faults.counts.get(what, 0) + 1

    def draw(self) -> float:
        with self.lock:
            return self.rng.random()

    def refuse(self, status: int) -> None:
        self.count(str(status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()

    def target(self) -> Path | None:
        name = self.path.lstrip("/").split("?", 1)[0]
        path = (self.folder / name).resolve()
        return path if path.parent == self.folder.resolve() and path.is_file() else None

    def do_HEAD(self) -> None:
        self.serve(body=False)

    def do_GET(self) -> None:
        self.serve(body=True)

    def serve(self, body: bool) -> None:
        self.count("requests")
        if sum(v for k, v in self.faults.counts.items() if k == "requests") > self.faults.max_requests:
            return self.refuse(503)
        path = self.target()
        if path is None:
            return self.refuse(404)
        if path.name.startswith("dead"):
            return self.refuse(503)
        draw = self.draw()
        f = self.faults
        if draw < f.unavailable:
            return self.refuse(503)
        if draw < f.unavailable + f.throttled:
            return self.refuse(429)
        data = path.read_bytes()
        start, end = 0, len(data)
        ranged = self.headers.get("Range")
        status = 200
        if ranged and f.ranges:
            found = re.match(r"bytes=(\d+)-(\d*)", ranged)
            if found:
                start = int(found.group(1))
                end = min(len(data), int(found.group(2)) + 1 if found.group(2) else len(data))
                status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes" if f.ranges else "none")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if draw < f.unavailable + f.throttled + f.stalled:
            self.count("stalled")
            time.sleep(f.stall_s)
        if draw > 1 - f.dropped and end - start > 1:
            self.count("dropped")
            cut = start + int((end - start) * self.draw())
            self.wfile.write(data[start:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        try:
            self.wfile.write(data[start:end])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gives up on a stalled or dropped connection is what these tests cause


class FaultyServer:
    """`with FaultyServer(folder, Faults(...)) as server: server.url(name)`."""

    def __init__(self, folder: Path, faults: Faults):
        handler = type(
            "Handler",
            (FaultyHandler,),
            {"folder": Path(folder), "faults": faults, "rng": random.Random(faults.seed), "lock": threading.Lock()},
        )
        self.faults = faults
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self._threads = [
            threading.Thread(target=self.httpd.serve_forever, daemon=True),
            threading.Thread(target=self._stop_after_lifetime, daemon=True),
        ]
        self._stopped = threading.Event()

    def _stop_after_lifetime(self) -> None:
        if not self._stopped.wait(self.faults.lifetime_s):
            self.httpd.shutdown()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> FaultyServer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
