"""Reading a remote shard (any fsspec URL: http, s3, gcs) through timeouts, throttling and dropped connections.

`ResilientRemoteFile` is a plain readable stream for the tar reader. It streams the object front to back and,
when a read fails with a fault that may pass (a timeout, 429, a 5xx, a connection dropped mid-body, a body that
ends short of the object's size), waits (exponential backoff with jitter) and goes on from the byte it had reached:
by a ranged read where the store allows ranges, else by streaming the object again from its start and skipping
what was already read, so the reader above sees one unbroken stream either way. A fault that cannot pass (404,
403, another 4xx) stops at once; one that keeps failing `tries` times in a row raises `RemoteReadError`, which
`embed` records as the shard being unreadable, with the reason, and retries on the next run: a shard is never
half read and counted as whole.
"""

from __future__ import annotations

import io
import logging
import random
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 5  # consecutive failures of one read before the shard is given up
    timeout_s: float = 60.0  # a connection that sends nothing for this long has failed
    backoff_s: float = 1.0  # the first wait; doubled each failure in a row, up to max_backoff_s, with jitter
    max_backoff_s: float = 30.0
    range_block_bytes: int = 8 << 20  # the size of each ranged read after a resume

    @classmethod
    def of(cls, settings) -> RetryPolicy:
        """The policy `settings` (EmbedSettings) give: remote_tries, remote_timeout, remote_backoff."""
        return cls(tries=settings.remote_tries, timeout_s=settings.remote_timeout, backoff_s=settings.remote_backoff)

    def wait(self, failures: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)


DEFAULT_POLICY = RetryPolicy()


class RemoteReadError(OSError):
    """A remote shard that failed on every try: the reason, and how far it got."""


class _RangesUnsupported(Exception):
    pass


class _EndedShort(OSError):
    pass


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


class _QuietAbandonedConnections(logging.Filter):
    """aiohttp reports each connection a failed read left behind as "Unclosed connection" on asyncio's logger;
    abandoning them is what a retry does, so those lines would only bury the one that matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Unclosed connection", "Unclosed client session"))


def filesystem(url: str, policy: RetryPolicy) -> tuple[Any, str]:
    """The fsspec filesystem of `url` (HTTP with the policy's timeout on connecting and on each read) and the path."""
    import fsspec

    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _QuietAbandonedConnections) for f in asyncio_log.filters):
        asyncio_log.addFilter(_QuietAbandonedConnections())

    options: dict = {}
    if is_http(url):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, connect=policy.timeout_s, sock_read=policy.timeout_s)
        options = {"client_kwargs": {"timeout": timeout}}
    return fsspec.core.url_to_fs(url, **options)


def is_transient(error: BaseException) -> bool:
    """Whether trying again may help: not for a missing object, a refusal, or another client error."""
    if isinstance(error, FileNotFoundError) and error.__cause__ is not None:
        # fsspec's HTTP info() reports a failed HEAD and GET as a missing file whatever the status was
        return is_transient(error.__cause__)
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(error, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int) and 400 <= status < 500:
        return status in (408, 425, 429)
    return not isinstance(error, (TypeError, AttributeError, KeyError, NotImplementedError))


def describe(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError) and error.__cause__ is not None:
        return describe(error.__cause__)
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return f"HTTP {status} {getattr(error, 'message', '')}".strip()
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def with_retries(call, policy: RetryPolicy, what: str, sleep=time.sleep):
    """`call()` tried up to `policy.tries` times while it fails with a fault that may pass."""
    for failures in range(1, policy.tries + 1):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - sorted into faults that may pass and those that cannot
            if not is_transient(error):
                raise
            if failures == policy.tries:
                raise RemoteReadError(f"{what}: {describe(error)} on each of {policy.tries} tries") from error
            sleep(policy.wait(failures))
    raise AssertionError("unreachable")


class ResilientRemoteFile(io.RawIOBase):
    """A remote object read front to back, resuming where it failed (see the module docstring)."""

    def __init__(self, url: str, policy: RetryPolicy = DEFAULT_POLICY, sleep=time.sleep):
        self.url, self.policy, self._sleep = url, policy, sleep
        self.fs, self.path = filesystem(url, policy)
        info = with_retries(lambda: self.fs.info(self.path), policy, f"{url}: cannot read its size", sleep)
        self.size: int | None = info.get("size")
        self.position = 0
        self.ranges: bool | None = None  # False once a resumed read is answered with the whole object
        self.failures = 0  # all, over the object's life
        self.restarts = 0  # times it was streamed again from the start
        self._stream: Any = None

    def readable(self) -> bool:
        return True

    def _open_at(self, position: int):
        if position > 0 and self.ranges is not False:
            block = {"block_size": self.policy.range_block_bytes} if is_http(self.url) else {}
            handle = self.fs.open(self.path, "rb", **block)
            try:
                handle.seek(position)
                return handle
            except ValueError:  # fsspec opens a stream where the server announces no ranges: it cannot seek
                handle.close()
                self.ranges = False
        handle = self.fs.open(self.path, "rb", **({"block_size": 0} if is_http(self.url) else {}))
        if position > 0:  # no ranges: stream it again and skip what was read
            self.restarts += 1
            skipped = 0
            while skipped < position:
                chunk = handle.read(min(1 << 20, position - skipped))
                if not chunk:
                    raise _EndedShort(f"the object ended at byte {skipped} while skipping to {position}")
                skipped += len(chunk)
        return handle

    def _read(self, size: int) -> bytes:
        if self._stream is None:
            self._stream = self._open_at(self.position)
        try:
            data = self._stream.read(size)
        except ValueError as error:
            if "range requests" in str(error):  # fsspec: the server answered a ranged read with the whole object
                raise _RangesUnsupported() from error
            raise
        if not data and self.size is not None and self.position < self.size:
            raise _EndedShort(f"the connection ended at byte {self.position} of {self.size}")
        return data

    def _close_stream(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
                pass
            self._stream = None

    def readinto(self, buffer) -> int:
        in_a_row = 0
        while True:
            try:
                data = self._read(len(buffer))
                break
            except _RangesUnsupported:
                self.ranges = False
                self._close_stream()
            except Exception as error:  # noqa: BLE001 - sorted into faults that may pass and those that cannot
                self._close_stream()
                if not is_transient(error):
                    raise
                in_a_row += 1
                self.failures += 1
                if in_a_row >= self.policy.tries:
                    raise RemoteReadError(
                        f"{describe(error)}; gave up after {in_a_row} tries in a row at byte {self.position}"
                        + (f" of {self.size}" if self.size else "")
                    ) from error
                self._sleep(self.policy.wait(in_a_row))
        count = len(data)
        buffer[:count] = data
        self.position += count
        return count

    def close(self) -> None:
        self._close_stream()
        super().close()


def open_remote(url: str, policy: RetryPolicy = DEFAULT_POLICY) -> io.BufferedReader:
    return io.BufferedReader(ResilientRemoteFile(url, policy), buffer_size=1 << 20)
