"""A Hub-compatible HTTP server on loopback, for offline tests of code that pushes to and pulls from the Hub.

[`LocalHub`] keeps model, dataset and space repositories on disk and speaks enough of the Hub HTTP API for the real,
unmodified `huggingface_hub`, `transformers` and `datasets` clients: repo creation and deletion, pre-upload, NDJSON
commits, the Git LFS batch API (basic transfer), `resolve` downloads with `Range`, `HEAD` metadata and the Hub's
`X-Error-Code` 404s, repo info, `tree` listings (recursive, paginated), `paths-info`, refs, commit history,
branches, tags and README metadata validation. Commits are immutable snapshots with 40-hex shas. It binds 127.0.0.1
only and every URL it hands out points back to itself.

```py
>>> from hf_explvec.testing import LocalHub, hub_client_env
>>> with LocalHub() as hub, hub_client_env(hub.endpoint):
...     from huggingface_hub import HfApi
...     HfApi().create_repo("org/model")
```

In pytest, the `local_hub` fixture of `hf_explvec.testing.pytest_plugin` does both, per test.

The package is laid out like moto's services: `storage` (the state on disk: repos, revisions, commits, LFS
objects), `responses` (the wire format: JSON bodies and headers), `routes` (the URL table and its handlers), this
module (the HTTP server and [`LocalHub`]) and `env` ([`hub_client_env`]: pointing the clients at a server).
"""

import contextlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .responses import DropConnection, Response, error_response
from .routes import FAULT_KINDS, Request, match_route
from .storage import HubError, HubStorage

__all__ = ["FAULT_KINDS", "HubError", "LocalHub"]

logger = logging.getLogger(__name__)

_CHUNK = 4 << 20  # bytes read from a request body at a time


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection: routes each request through `routes.ROUTES` and writes the handler's answer."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection is kept
    server: "_Server"

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        hub = self.server.hub
        self._body_done = "Content-Length" not in self.headers and "Transfer-Encoding" not in self.headers
        request = Request(
            self.command, url.path, parse_qs(url.query), self.headers, storage=hub.storage,
            endpoint=self.server.endpoint, tree_page_size=hub.tree_page_size, read_body=self._stream_body,
            take_fault=hub.take_fault,
        )  # fmt: skip
        try:
            handler, params = match_route(self.command, url.path)
            response = handler(request, **params)
        except DropConnection:
            return self._drop()
        except HubError as err:
            response = error_response(err)
        except Exception as err:  # a bug here must reach the client as an HTTP error, not as a dropped connection
            logger.exception("Local Hub failed on %s %s", self.command, self.path)
            response = error_response(HubError(500, f"Local Hub internal error: {type(err).__name__}: {err}"))
        if not self._body_done:  # unread request body: the connection cannot be reused
            self.close_connection = True
        self._send(response)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        logger.debug("%s " + format, self.address_string(), *args)

    def _drop(self) -> None:
        """Close the connection at once (fault injection): the client sees it cut, without a (complete) answer."""
        logger.debug("Local Hub drops the connection of %s %s (injected fault)", self.command, self.path)
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    # -- request body ---------------------------------------------------------------------------------------------
    def _stream_body(self, write: Callable[[bytes], Any]) -> None:
        """Pass the request body to `write`, chunk by chunk (`Content-Length` or chunked transfer encoding).

        A chunk is a view of a buffer that the next chunk overwrites: `write` must use it before returning.
        """
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            buffer = memoryview(bytearray(_CHUNK))
            while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
                self._copy_exact(size, write, buffer)
                self.rfile.readline(1024)
            while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
        else:
            size = int(self.headers.get("Content-Length") or 0)
            self._copy_exact(size, write, memoryview(bytearray(min(size, _CHUNK))))  # small bodies: small buffer
        self._body_done = True

    def _copy_exact(self, size: int, write: Callable[[bytes], Any], buffer: memoryview) -> None:
        if size > len(buffer):  # a large body (an LFS upload): receive the next chunk while `write` hashes this one
            return self._copy_pipelined(size, write, buffer)
        n = self.rfile.readinto(buffer[:size]) or 0
        while n < size:
            got = self.rfile.readinto(buffer[n:size])
            if not got:
                raise HubError(400, "Request body ended early")
            n += got
        if size:
            write(buffer[:size])

    def _copy_pipelined(self, size: int, write: Callable[[bytes], Any], buffer: memoryview) -> None:
        """`_copy_exact` with two buffers: `write` of one runs in a helper thread while the other is received.

        `write` is called in order, one chunk at a time; its exceptions are raised here.
        """
        buffers, pending, i = (buffer, memoryview(bytearray(len(buffer)))), None, 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="LocalHub-body") as pool:
            try:
                while size > 0:
                    chunk = buffers[i % 2]
                    n = self.rfile.readinto(chunk[: min(size, len(chunk))])
                    if not n:
                        raise HubError(400, "Request body ended early")
                    if pending is not None:
                        pending.result()  # the previous chunk is written: its buffer can be filled next
                    pending = pool.submit(write, chunk[:n])
                    size, i = size - n, i + 1
                pending.result()
            except BaseException:
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        pending.result()  # let `write` finish before its buffer is dropped
                raise

    # -- response -------------------------------------------------------------------------------------------------
    def _send(self, response: Response) -> None:
        """Write status, headers and body; a file part goes out with `sendfile` (no copy through Python)."""
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(response.content_length))
        self.end_headers()
        if self.command == "HEAD":
            return
        count = response.content_length
        if response.cut_after is not None:
            count = min(count, response.cut_after)
        if response.file is None:
            self.wfile.write(response.body[:count])
        elif count > 0:
            with open(response.file, "rb") as f:
                self.connection.sendfile(f, response.offset, count)
        if response.cut_after is not None:
            self._drop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "LocalHub"

    def __init__(self, hub: "LocalHub", port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.hub, self.endpoint = hub, f"http://127.0.0.1:{self.server_address[1]}"
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Local Hub connection from %s ended with an error", client_address, exc_info=True)


class LocalHub:
    """A Hub-compatible HTTP server on 127.0.0.1, keeping its repositories on disk.

    Use it as a context manager: the server starts on a free loopback port in a background thread and stops on exit.
    Point the clients at it with [`hub_client_env`] (or the `local_hub` pytest fixture, which does both).

    Args:
        root_dir (`str` or `os.PathLike`, *optional*):
            Directory for repositories and blobs. Defaults to a temporary directory removed by [`LocalHub.close`].
        tree_page_size (`int`, *optional*, defaults to 1000):
            Entries per page of the `tree` listing (the Hub pages by 1000, and by 50 with `expand=True`).

    Fault injection (to test how clients cope with a server that goes away):

    - [`LocalHub.inject_fault`]`(kind, times=1, after_bytes=None)` makes the next `times` matching requests lose their
      connection half-way: `"download"` (a `GET` of file content, `resolve` or LFS object) sends the headers and
      `after_bytes` bytes of the body (default: half of it), then closes the socket; `"lfs_upload"` (the `PUT` of an
      LFS object) and `"commit"` (the NDJSON commit `POST`) receive `after_bytes` bytes of the request body (default:
      half of it), then close the socket without answering. A cut upload stores nothing and a cut commit is never
      applied: no partial commit becomes visible and every earlier revision stays intact.
      [`LocalHub.clear_faults`] disarms what is left; [`LocalHub.pending_faults`] tells what is left.
    - [`LocalHub.stop`] stops the server but keeps its repositories: requests are refused (connection refused) until
      [`LocalHub.start`] serves them again on the same port.

    Note that `huggingface_hub` retries: it resumes a cut download (up to 5 times in a row without progress, 1 s
    apart) and retries a cut LFS upload, like most API calls to a stopped server (5 times, with backoff of 1, 2, 4, 8
    and 8 s); a cut commit is not retried. Inject more faults than it retries (e.g. `times=6` with `after_bytes=0`)
    to see it give up, and skip its waits in tests (`monkeypatch.setattr(time, "sleep", lambda s: None)`); one fault
    shows that it recovers.

    Example:
        ```py
        >>> with LocalHub() as hub, hub_client_env(hub.endpoint):
        ...     HfApi().create_repo("org/name", repo_type="dataset")
        ...     hub.commits("org/name", repo_type="dataset")[0]["title"]
        'initial commit'
        >>> with LocalHub() as hub, hub_client_env(hub.endpoint):
        ...     HfApi().create_repo("org/name")
        ...     hub.inject_fault("commit")
        ...     HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/name")
        Traceback (most recent call last):
        httpx2.RemoteProtocolError: Server disconnected without sending a response.
        ```
    """

    def __init__(self, root_dir: str | os.PathLike | None = None, *, tree_page_size: int = 1000) -> None:
        if not isinstance(tree_page_size, int) or tree_page_size < 1:
            raise ValueError(f"tree_page_size must be a positive int, got {tree_page_size!r}")
        self._tmp = tempfile.TemporaryDirectory(prefix="localhub-") if root_dir is None else None
        self.root = Path(self._tmp.name if self._tmp is not None else root_dir)
        self.storage = HubStorage(self.root)
        self.tree_page_size = tree_page_size
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0  # kept by stop(), so that start() serves the same endpoint again
        self._faults: dict[str, list[int | None]] = {}
        self._faults_lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """Base URL of the running server, `http://127.0.0.1:<port>`."""
        if self._server is None:
            raise RuntimeError("LocalHub is not running: call start() or use it as a context manager")
        return self._server.endpoint

    def start(self) -> "LocalHub":
        """Start serving on a free port of 127.0.0.1 (no-op if already running)."""
        if not self.root.is_dir():
            raise RuntimeError(f"LocalHub root {self.root} no longer exists (a closed temporary hub cannot restart)")
        if self._server is None:
            self._server = _Server(self, self._port)
            self._port = self._server.server_address[1]
            name = f"LocalHub-{self._server.server_address[1]}"
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=name, daemon=True)
            self._thread.start()
            logger.debug("Local Hub serving %s from %s", self.endpoint, self.root)
        return self

    def close(self) -> None:
        """Stop the server, drop open connections and remove the temporary root directory if it made one."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def stop(self) -> None:
        """Stop serving and drop open connections, keeping the repositories: clients get "connection refused".

        [`LocalHub.start`] serves again on the same port, so [`LocalHub.endpoint`] does not change.
        """
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            with server.connections_lock:
                for conn in list(server.connections):
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            if self._thread is not None:
                self._thread.join(timeout=5)

    def inject_fault(self, kind: str, times: int = 1, *, after_bytes: int | None = None) -> None:
        """Make the next `times` requests of a kind lose their connection half-way (see the class docstring).

        Args:
            kind (`str`): `"download"`, `"lfs_upload"` or `"commit"`.
            times (`int`, *optional*, defaults to 1): How many matching requests to cut (added to those pending).
            after_bytes (`int`, *optional*):
                Body bytes sent (download) or received (upload, commit) before the connection is closed.
                Defaults to half of the body.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {kind!r}, expected one of {FAULT_KINDS}")
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise ValueError(f"times must be a positive int, got {times!r}")
        if after_bytes is not None and (not isinstance(after_bytes, int) or after_bytes < 0):
            raise ValueError(f"after_bytes must be a non-negative int or None, got {after_bytes!r}")
        with self._faults_lock:
            self._faults.setdefault(kind, []).extend([after_bytes] * times)

    def take_fault(self, kind: str, body_size: int) -> int | None:
        """Consume one pending fault of `kind`: the number of body bytes to pass before cutting, or `None` if none."""
        with self._faults_lock:
            pending = self._faults.get(kind)
            if not pending:
                return None
            after_bytes = pending.pop(0)
        return body_size // 2 if after_bytes is None else after_bytes

    def pending_faults(self) -> dict[str, int]:
        """How many injected faults of each kind have not fired yet."""
        with self._faults_lock:
            return {kind: len(pending) for kind, pending in self._faults.items() if pending}

    def clear_faults(self) -> None:
        """Disarm every injected fault that has not fired yet."""
        with self._faults_lock:
            self._faults.clear()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[dict]:
        """History of a revision, newest first: dicts with `id`, `parents`, `title`, `message`, `date`, `files`."""
        history = self.storage.history(repo_type, repo_id, self.storage.resolve(repo_type, repo_id, revision))
        keys = ("id", "parents", "title", "message", "date")
        return [{**{k: c[k] for k in keys}, "files": sorted(c["tree"])} for c in history]

    def read_file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        """Content of a file at a revision, read straight from storage (raises [`HubError`] if missing)."""
        sha = self.storage.resolve(repo_type, repo_id, revision)
        entry = self.storage.commit(repo_type, repo_id, sha)["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at {revision}", "EntryNotFound")
        return self.storage.file_path(entry).read_bytes()
