"""A Hub-compatible HTTP server on loopback, for offline tests of code that pushes to and pulls from the Hub.

[`LocalHub`] keeps model, dataset and space repositories on disk (see `storage`) and speaks enough of the Hub
HTTP API for the real, unmodified `huggingface_hub`, `transformers` and `datasets` clients: repo creation and
deletion, pre-upload, NDJSON commits, the Git LFS batch API (basic transfer), `resolve` downloads with `Range`,
`HEAD` metadata and the Hub's `X-Error-Code` 404s, repo info, `tree` listings (recursive, paginated), `paths-info`,
refs, commit history, branches, tags and README metadata validation. Commits are immutable snapshots with 40-hex
shas. It binds 127.0.0.1 only and every URL it hands out points back to itself.

```py
>>> from hf_explvec.testing import LocalHub, hub_client_env
>>> with LocalHub() as hub, hub_client_env(hub.endpoint):
...     from huggingface_hub import HfApi
...     HfApi().create_repo("org/model")
```

In pytest, the `local_hub` fixture of `hf_explvec.testing.pytest_plugin` does both, per test.

How the clients are pointed at the server: see [`hf_explvec.hub.loopback.env`].
"""

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .env import FAKE_TOKEN, hub_client_env
from .storage import LOCAL_USER, HubError, HubStorage, card_data, parse_commit_payload

__all__ = ["FAKE_TOKEN", "HubError", "LocalHub", "hub_client_env"]

logger = logging.getLogger(__name__)

_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
_CHUNK = 1 << 20
_LFS_BATCH = ["info", "lfs", "objects", "batch"]
FAULT_KINDS = ("download", "lfs_upload", "commit")
"""Requests [`LocalHub.inject_fault`] can cut: file downloads, LFS object uploads and commits."""


class _DropConnection(Exception):
    """Raised inside the handler to close the connection at once, without a (further) response."""


def _flag(query: dict, name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true", "yes")


def _take_revision(segments: list[str]) -> tuple[str, list[str]]:
    """Split raw path segments into a revision (URL-encoded, or `refs/<kind>/<name>` unencoded) and the rest."""
    if not segments or not segments[0]:
        raise HubError(400, "Missing revision in URL")
    if unquote(segments[0]) == "refs" and len(segments) >= 3:
        return "/".join(unquote(s) for s in segments[:3]), segments[3:]
    return unquote(segments[0]), segments[1:]


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """`(start, end)` (inclusive) of a single `bytes=` range; `None` to serve the whole file; 416 if unsatisfiable."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", value.strip())
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":
        start, end = max(0, size - int(match[2])), size - 1
    else:
        start, end = int(match[1]), min(int(match[2]) if match[2] else size - 1, size - 1)
    if start >= size or start > end:
        raise HubError(416, f"Range {value} not satisfiable for {size} bytes")
    return start, end


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection: routes each request to the Hub endpoint it imitates (see [`LocalHub`])."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection is kept
    server: "_Server"

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.url_path, self.query = url.path, parse_qs(url.query)
        self.store, self.endpoint = self.server.hub.storage, self.server.endpoint
        self._body_done = "Content-Length" not in self.headers and "Transfer-Encoding" not in self.headers
        try:
            self._route(url.path.split("/")[1:])
        except _DropConnection:
            logger.debug("Local Hub drops the connection of %s %s (injected fault)", self.command, self.path)
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        except HubError as err:
            self._send_error(err)
        except Exception as err:  # a bug here must reach the client as an HTTP error, not as a dropped connection
            logger.exception("Local Hub failed on %s %s", self.command, self.path)
            self._send_error(HubError(500, f"Local Hub internal error: {type(err).__name__}: {err}"))
        if not self._body_done:  # unread request body: the connection cannot be reused
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        logger.debug("%s " + format, self.address_string(), *args)

    # -- request and response plumbing ----------------------------------------------------------------------------
    def _stream_body(self, write: Callable[[bytes], Any]) -> None:
        """Pass the request body to `write`, chunk by chunk (`Content-Length` or chunked transfer encoding)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
                self._copy_exact(size, write)
                self.rfile.readline(1024)
            while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
        else:
            self._copy_exact(int(self.headers.get("Content-Length") or 0), write)
        self._body_done = True

    def _copy_exact(self, size: int, write: Callable[[bytes], Any]) -> None:
        while size > 0:
            chunk = self.rfile.read(min(size, _CHUNK))
            if not chunk:
                raise HubError(400, "Request body ended early")
            write(chunk)
            size -= len(chunk)

    def _body(self) -> bytes:
        chunks: list[bytes] = []
        self._stream_body(chunks.append)
        return b"".join(chunks)

    def _json_body(self) -> dict:
        body = self._body()
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as err:
            raise HubError(400, f"Request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise HubError(400, f"Request body must be a JSON object, got {type(data).__name__}")
        return data

    def _send(self, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode().replace("\n", " ")}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message}, err.status, {**headers, **err.headers})

    def _send_file(self, path: Path, size: int, headers: dict[str, str]) -> None:
        """Send a file, or the single byte range the `Range` header asks for (206), with `Accept-Ranges`."""
        start, end, status = 0, size - 1, 200
        if "Range" in self.headers:
            try:
                span = _parse_range(self.headers["Range"], size)
            except HubError as err:
                err.headers["Content-Range"] = f"bytes */{size}"
                raise
            if span is not None:
                (start, end), status = span, 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        cut = self.server.hub.take_fault("download", length) if self.command == "GET" else None
        self._send(status, b"", {**headers, "Accept-Ranges": "bytes"}, length=length)
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            remaining = length if cut is None else min(cut, length)
            while remaining > 0:
                chunk = f.read(min(remaining, _CHUNK))
                self.wfile.write(chunk)
                remaining -= len(chunk)
        if cut is not None:
            raise _DropConnection

    def _cut_request_body(self, cut: int, write: Callable[[bytes], Any] | None = None) -> None:
        """Receive `cut` bytes of the request body (passing them to `write`), then drop the connection."""
        received = 0

        def take(chunk: bytes) -> None:
            nonlocal received
            if write is not None:
                write(chunk[: cut - received])
            received += len(chunk)
            if received >= cut:
                raise _DropConnection

        if cut > 0:
            self._stream_body(take)
        raise _DropConnection

    # -- routing --------------------------------------------------------------------------------------------------
    def _route(self, segs: list[str]) -> None:
        method = self.command
        if segs[:1] == ["api"]:
            return self._route_api(method, segs[1:])
        if segs[:1] == ["_lfs"] and len(segs) >= 2:
            return self._lfs_object(method, segs[1], segs[2:])
        repo_type = "model"
        if segs and segs[0] in _PLURAL:
            repo_type, segs = _PLURAL[segs[0]], segs[1:]
        if method == "POST" and len(segs) == 6 and segs[1].endswith(".git") and segs[2:] == _LFS_BATCH:
            return self._lfs_batch(repo_type, f"{unquote(segs[0])}/{unquote(segs[1][:-4])}")
        if method in ("GET", "HEAD") and len(segs) >= 4 and segs[2] == "resolve":
            revision, rest = _take_revision(segs[3:])
            return self._resolve(repo_type, f"{unquote(segs[0])}/{unquote(segs[1])}", revision, rest)
        raise HubError(404, f"Local Hub has no route for {method} {self.url_path}")

    def _route_api(self, method: str, segs: list[str]) -> None:
        simple = {
            ("GET", "whoami-v2"): self._whoami,
            ("POST", "repos/create"): self._create_repo,
            ("DELETE", "repos/delete"): self._delete_repo,
            ("POST", "validate-yaml"): self._validate_yaml,
        }
        if (method, "/".join(segs)) in simple:
            return simple[(method, "/".join(segs))]()
        if segs[:1] == ["telemetry"]:
            return self._send_json({})
        if len(segs) < 3 or segs[0] not in _PLURAL:
            raise HubError(404, f"Local Hub has no route for {method} {self.url_path}")
        repo_type, repo_id, rest = _PLURAL[segs[0]], f"{unquote(segs[1])}/{unquote(segs[2])}", segs[3:]
        action, tail = (rest[0], rest[1:]) if rest else (None, [])
        if method == "GET" and action in (None, "revision"):
            revision = "/".join(unquote(s) for s in tail) or "main"
            return self._send_json(self.store.repo_info(repo_type, repo_id, revision, _flag(self.query, "blobs")))
        if method == "GET" and action == "refs":
            return self._refs(repo_type, repo_id)
        if method == "GET" and action == "discussions" and not tail:
            # No discussions are kept (pull requests are refs only); transformers lists them to look for a
            # safetensors conversion PR when a repo has only pickled weights.
            self.store.repo_info(repo_type, repo_id, "main", False)  # 404 RepoNotFound for an unknown repo
            return self._send_json({"discussions": [], "count": 0, "start": 0, "numClosedDiscussions": 0})
        if method in ("POST", "DELETE") and action in ("branch", "tag") and tail:
            return self._ref(method, action, repo_type, repo_id, "/".join(unquote(s) for s in tail))
        handlers = {
            ("GET", "tree"): self._tree,
            ("POST", "paths-info"): self._paths_info,
            ("GET", "commits"): self._commits,
            ("POST", "preupload"): self._preupload,
            ("POST", "commit"): self._commit,
        }
        if (method, action) in handlers and tail:
            revision, path = _take_revision(tail)
            return handlers[(method, action)](repo_type, repo_id, revision, "/".join(unquote(s) for s in path))
        raise HubError(404, f"Local Hub has no route for {method} {self.url_path}")

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}"

    # -- accounts and repositories --------------------------------------------------------------------------------
    def _whoami(self) -> None:
        if not self.headers.get("Authorization"):
            raise HubError(401, "Invalid credentials in Authorization header")
        token = {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}}
        self._send_json({"type": "user", "name": LOCAL_USER, "fullname": "Local Hub user", "orgs": [], "auth": token})

    def _repo_key(self, body: dict) -> tuple[str, str]:
        if not isinstance(body.get("name"), str):
            raise HubError(400, f"Missing or invalid repo 'name' in request body: {body.get('name')!r}")
        return body.get("type") or "model", f"{body.get('organization') or LOCAL_USER}/{body['name']}"

    def _create_repo(self) -> None:
        body = self._json_body()
        repo_type, repo_id = self._repo_key(body)
        url = self._repo_url(repo_type, repo_id)
        try:
            private = bool(body.get("private")) or body.get("visibility") == "private"
            self.store.create_repo(repo_type, repo_id, private=private)
        except HubError as err:
            if err.status != 409:
                raise
            return self._send_json({"error": err.message, "url": url}, 409)  # the client reads `url` on exist_ok
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self.store.delete_repo(*self._repo_key(self._json_body()))
        self._send_json({})

    def _validate_yaml(self) -> None:
        content = str(self._json_body().get("content") or "")
        block = re.match(r"^---[ \t]*\n(.*?)\n?---[ \t]*(\n|$)", content, flags=re.DOTALL)
        if block is not None and block[1].strip() and card_data(content) is None:
            message = "Invalid YAML metadata: the block between the '---' lines must be a valid YAML mapping"
            return self._send_json({"errors": [{"message": message}], "warnings": []}, 400)
        self._send_json({"errors": [], "warnings": []})

    # -- listings -------------------------------------------------------------------------------------------------
    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        commit = self.store.snapshot(repo_type, repo_id, revision)
        paths = self.store.list_tree(commit["tree"], path, _flag(self.query, "recursive"))
        expand = _flag(self.query, "expand")
        page_size = min(self.server.hub.tree_page_size, 50) if expand else self.server.hub.tree_page_size
        raw_cursor = self.query.get("cursor", ["0"])[-1]
        if not raw_cursor.isdigit():
            raise HubError(400, f"Invalid cursor {raw_cursor!r}")
        cursor = int(raw_cursor)
        entries = [self.store.path_info(commit["tree"], p) for p in paths[cursor : cursor + page_size]]
        if expand:
            entries = self.store.with_last_commit(repo_type, repo_id, commit["id"], entries)
        headers = {}
        if cursor + page_size < len(paths):  # cursor pagination through a `Link` header, as the Hub does
            query = {key: values[-1] for key, values in self.query.items()} | {"cursor": str(cursor + page_size)}
            headers["Link"] = f'<{self.endpoint}{self.url_path}?{urlencode(query)}>; rel="next"'
        self._send_json(entries, headers=headers)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, _: str) -> None:
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = self._json_body()
            paths, expand = body.get("paths") or [], bool(body.get("expand"))
        else:  # form-encoded, as `HfApi.get_paths_info` sends it
            form = parse_qs(self._body().decode())
            paths, expand = form.get("paths", []), _flag(form, "expand")
        commit = self.store.snapshot(repo_type, repo_id, revision)
        tree, paths = commit["tree"], [p.strip("/") for p in paths if isinstance(p, str)]
        found = [p for p in paths if p in tree or any(k.startswith(p + "/") for k in tree)]
        entries = [self.store.path_info(tree, p) for p in found]
        self._send_json(self.store.with_last_commit(repo_type, repo_id, commit["id"], entries) if expand else entries)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        self._send_json(self.store.refs_info(repo_type, repo_id))

    def _commits(self, repo_type: str, repo_id: str, revision: str, _: str) -> None:
        self._send_json(self.store.commits_info(repo_type, repo_id, revision))

    def _ref(self, method: str, kind: str, repo_type: str, repo_id: str, name: str) -> None:
        if method == "DELETE":
            self.store.delete_ref(repo_type, repo_id, "heads" if kind == "branch" else "tags", name)
        elif kind == "branch":
            start = self._json_body().get("startingPoint") or "main"
            self.store.create_ref(repo_type, repo_id, "heads", name, start)
        else:  # POST /tag/{revision} with {"tag": name, "message": ...}
            tag = self._json_body().get("tag")
            if not isinstance(tag, str):
                raise HubError(400, f"Missing or invalid 'tag' in request body: {tag!r}")
            self.store.create_ref(repo_type, repo_id, "tags", tag, name)
        self._send_json({})

    # -- uploads --------------------------------------------------------------------------------------------------
    def _preupload(self, repo_type: str, repo_id: str, revision: str, _: str) -> None:
        body = self._json_body()
        commit = self.store.snapshot(repo_type, repo_id, revision)
        files = self.store.preupload(commit["tree"], body.get("files") or [], body.get("gitIgnore"))
        self._send_json({"files": files, "commitOid": commit["id"]})

    def _commit(self, repo_type: str, repo_id: str, revision: str, _: str) -> None:
        cut = self.server.hub.take_fault("commit", int(self.headers.get("Content-Length") or 0))
        if cut is not None:
            self._cut_request_body(cut)
        header, operations = parse_commit_payload(self._body())
        sha, pr_num = self.store.commit_files(
            repo_type, repo_id, revision, operations, title=header.get("summary") or "",
            message=header.get("description") or "", parent_commit=header.get("parentCommit"),
            create_pr=_flag(self.query, "create_pr"),
        )  # fmt: skip
        url = self._repo_url(repo_type, repo_id)
        pr_url = f"{url}/discussions/{pr_num}" if pr_num is not None else None
        answer = {"success": True, "commitOid": sha, "commitUrl": f"{url}/commit/{sha}", "pullRequestUrl": pr_url}
        self._send_json(answer)

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self.store.repo_meta(repo_type, repo_id)  # 404 if the repo does not exist
        body = self._json_body()
        objects = self.store.lfs_batch(body.get("operation"), body.get("objects") or [], self._lfs_href)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        self._send_json({"transfer": "basic", "objects": objects}, headers=headers)

    def _lfs_href(self, oid: str) -> str:
        return f"{self.endpoint}/_lfs/{oid}"

    def _lfs_object(self, method: str, oid: str, rest: list[str]) -> None:
        path = self.store.lfs_path(oid)
        if method == "PUT" and not rest:
            size = self.query.get("size", [None])[-1]
            size = int(size) if size and size.isdigit() else None
            cut = self.server.hub.take_fault("lfs_upload", int(self.headers.get("Content-Length") or size or 0))
            if cut is not None:  # the partial upload goes to a temporary file that `receive_lfs` removes
                self.store.receive_lfs(oid, size, lambda write: self._cut_request_body(cut, write))
            self.store.receive_lfs(oid, size, self._stream_body)
            return self._send(200, b"", {})
        if method == "POST" and rest == ["verify"]:
            size = self._json_body().get("size")
            if not path.is_file() or path.stat().st_size != size:
                raise HubError(404, f"LFS object {oid} of size {size} was not uploaded")
            return self._send_json({})
        if method in ("GET", "HEAD") and not rest and path.is_file():
            headers = {"Content-Type": "application/octet-stream", "ETag": f'"{oid}"'}
            return self._send_file(path, path.stat().st_size, headers)
        raise HubError(404, f"LFS object {oid} not found")

    # -- downloads ------------------------------------------------------------------------------------------------
    def _resolve(self, repo_type: str, repo_id: str, revision: str, rest: list[str]) -> None:
        """`/resolve/`: file content with `X-Repo-Commit`, `ETag` (`X-Linked-Etag`/`-Size` for LFS) and `Range`."""
        commit = self.store.snapshot(repo_type, repo_id, revision)
        path = "/".join(unquote(s) for s in rest)
        entry = commit["tree"].get(path)
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit["id"]}
        if entry is None:  # the client caches the absence of the file at this commit
            no_entry = f"Entry not found: {path} at {revision}"
            raise HubError(404, no_entry, "EntryNotFound", {"X-Repo-Commit": commit["id"]})
        if entry["lfs"]:
            etag = f'"{entry["lfs"]["oid"]}"'
            headers.update({"ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(entry["size"])})
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        self._send_file(self.store.file_path(entry), entry["size"], headers)


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
    apart) and retries a cut LFS upload (5 times, with backoff of 1, 2, 4, 8 and 8 s). Inject more faults than it
    retries (e.g. `times=6` with `after_bytes=0`) to see it give up; one fault shows that it recovers.

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
