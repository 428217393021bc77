"""The wire format of the loopback Hub: the JSON bodies, headers and status codes the Hub clients expect.

Functions here turn the state kept by [`~storage.HubStorage`] into what `huggingface_hub`, `transformers` and
`datasets` parse (repo info, `tree`/`paths-info` entries, refs, commit history, pre-upload and Git LFS batch
answers), parse what they send (NDJSON commit payloads, `Range` headers), and describe each answer as a
[`Response`] that the server (`server`) writes to the socket. Nothing here touches a socket or writes to disk.
"""

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .storage import LOCAL_USER, HubError, HubStorage, check_repo_path, is_sha256

__all__ = [
    "REPO_URL_PREFIX", "DropConnection", "Response", "card_data", "commit_answer", "commits_info", "error_response",
    "file_response", "json_response", "lfs_batch", "list_tree", "parse_commit_payload", "parse_range", "path_info",
    "preupload", "refs_info", "repo_info", "whoami", "with_last_commit",
]  # fmt: skip

REPO_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
"""What comes between the endpoint and the repo id in the URL of a repo, by repo type."""


class DropConnection(Exception):  # noqa: N818 (an instruction to the server, not an error)
    """Raised by a route to make the server close the connection at once, without a (further) response.

    Used by the fault injection of [`~server.LocalHub.inject_fault`] to cut an upload or a commit half-way.
    """


@dataclasses.dataclass
class Response:
    """One HTTP answer: status, headers and a body of bytes or of a file's byte range.

    Args:
        status (`int`, *optional*, defaults to 200): HTTP status code.
        headers (`dict[str, str]`, *optional*): Response headers (`Content-Length` is added by the server).
        body (`bytes`, *optional*): The body, unless `file` is given.
        file (`pathlib.Path`, *optional*): Send `length` bytes of this file from `offset` instead of `body`.
        offset (`int`, *optional*, defaults to 0): Where the file part starts.
        length (`int`, *optional*): Size of the file part (the `Content-Length`).
        cut_after (`int`, *optional*): Send only this many body bytes, then drop the connection (fault injection).
    """

    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None
    offset: int = 0
    length: int | None = None
    cut_after: int | None = None

    @property
    def content_length(self) -> int:
        return len(self.body) if self.file is None else int(self.length or 0)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (`Content-Type: application/json` unless `headers` says otherwise)."""
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())


def error_response(err: HubError) -> Response:
    """The Hub's error answer: `{"error": message}` with `X-Error-Message` and, for 404s, `X-Error-Code`."""
    headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode().replace("\n", " ")}
    if err.code:
        headers["X-Error-Code"] = err.code
    return json_response({"error": err.message}, err.status, {**headers, **err.headers})


def parse_range(value: str, size: int) -> tuple[int, int] | None:
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


def file_response(path: Path, size: int, headers: dict[str, str], range_header: str | None = None) -> Response:
    """A file, or the single byte range `range_header` asks for (206 with `Content-Range`), with `Accept-Ranges`."""
    start, end, status = 0, size - 1, 200
    headers = {**headers, "Accept-Ranges": "bytes"}
    if range_header is not None:
        try:
            span = parse_range(range_header, size)
        except HubError as err:
            err.headers["Content-Range"] = f"bytes */{size}"
            raise
        if span is not None:
            (start, end), status = span, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(status, headers, file=path, offset=start, length=end - start + 1)


def whoami() -> dict:
    """The body of `GET /api/whoami-v2` for the one local user, whatever the token."""
    token = {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}}
    return {"type": "user", "name": LOCAL_USER, "fullname": "Local Hub user", "orgs": [], "auth": token}


def commit_answer(repo_url: str, sha: str, pr_num: int | None) -> dict:
    """The body of a successful `POST /api/{type}s/{id}/commit/{rev}`."""
    pr_url = f"{repo_url}/discussions/{pr_num}" if pr_num is not None else None
    return {"success": True, "commitOid": sha, "commitUrl": f"{repo_url}/commit/{sha}", "pullRequestUrl": pr_url}


def card_data(readme: str | None) -> dict | None:
    """The YAML metadata block at the top of a README, or `None` if there is none or it is not a mapping."""
    match = re.match(r"^---[ \t]*\n(.*?)\n?---[ \t]*(\n|$)", readme or "", flags=re.DOTALL)
    if match is None:
        return None
    import yaml  # a dependency of huggingface_hub and datasets

    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def parse_commit_payload(body: bytes) -> tuple[dict, list[dict]]:
    """Parse the NDJSON body of `POST /api/{type}s/{id}/commit/{rev}` into its header and operations.

    Lines are `{"key": "header"|"file"|"lfsFile"|"deletedFile"|"deletedFolder", "value": {...}}`; `file` content is
    base64. Returns the header (`summary`, `description`, `parentCommit`) and operations for `commit_files`.
    """
    header, operations = None, []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                raw = value["content"]
                content = base64.b64decode(raw) if value.get("encoding", "base64") == "base64" else raw.encode()
                operations.append({"op": "file", "path": value["path"], "content": content})
            elif key in ("lfsFile", "deletedFile", "deletedFolder"):
                operations.append({"op": key, "path": value["path"], "oid": value.get("oid")})
            else:
                raise HubError(400, f"Unknown commit line key {key!r}, expected header, file, lfsFile or deleted*")
        except (ValueError, KeyError, TypeError) as err:
            raise HubError(400, f"Malformed commit line: {type(err).__name__}: {err}") from None
    if header is None:
        raise HubError(400, "Commit payload has no header line")
    return header, operations


def repo_info(storage: HubStorage, repo_type: str, repo_id: str, revision: str, blobs: bool = False) -> dict:
    """The body of `GET /api/{type}s/{id}[/revision/{rev}]`, as `ModelInfo`/`DatasetInfo` parse it."""
    meta, commit = storage.repo_meta(repo_type, repo_id), storage.snapshot(repo_type, repo_id, revision)
    siblings = []
    for path, entry in sorted(commit["tree"].items()):
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=entry["size"], blobId=entry["oid"])
            if entry["lfs"]:
                lfs = entry["lfs"]
                sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
        siblings.append(sibling)
    card = card_data(storage.read_text(commit["tree"], "README.md"))
    info: dict[str, Any] = {
        "_id": commit["id"][:24], "id": repo_id, "author": repo_id.split("/")[0], "sha": commit["id"],
        "lastModified": commit["date"], "createdAt": meta["createdAt"], "private": meta["private"],
        "gated": False, "disabled": False, "downloads": 0, "likes": 0, "siblings": siblings,
        "tags": [t for t in (card or {}).get("tags") or [] if isinstance(t, str)],
        "usedStorage": sum(e["size"] for e in commit["tree"].values()),
    }  # fmt: skip
    if card is not None:
        info["cardData"] = card
    if repo_type == "model":
        info.update(modelId=repo_id, library_name=(card or {}).get("library_name"))
        info["pipeline_tag"] = (card or {}).get("pipeline_tag")
    elif repo_type == "dataset":
        info.update(description=None, citation=None, paperswithcode_id=None)
    return info


def path_info(tree: dict, path: str) -> dict:
    """A `tree`/`paths-info` entry: a file (with `lfs` if stored in LFS) or a directory."""
    entry = tree.get(path)
    if entry is None:  # a directory: its oid hashes what lies below it
        inside = sorted((p, e["oid"]) for p, e in tree.items() if p.startswith(path + "/"))
        oid = hashlib.sha1(json.dumps(inside).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}
    out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if entry["lfs"]:
        out["lfs"] = dict(entry["lfs"])
    return out


def list_tree(tree: dict, path: str, recursive: bool) -> list[str]:
    """Paths of the files and directories under `path` (directories first unless recursive); 404 if none."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    dirs, files = set(), []
    for p in tree:
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix) :].split("/")
        if recursive:
            dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            files.append(p)
        elif len(parts) > 1:
            dirs.add(prefix + parts[0])
        else:
            files.append(p)
    if prefix and not files:
        raise HubError(404, f"Directory {path} not found", "EntryNotFound")
    return sorted(dirs | set(files)) if recursive else sorted(dirs) + sorted(files)


def refs_info(storage: HubStorage, repo_type: str, repo_id: str) -> dict:
    """The body of `GET /api/{type}s/{id}/refs`: branches, tags, converts and pull requests."""
    refs = storage.refs(repo_type, repo_id)

    def fmt(kind: str, prefix: str) -> list[dict]:
        return [{"name": n, "ref": prefix + n, "targetCommit": sha} for n, sha in sorted(refs[kind].items())]

    branches, tags, pulls = fmt("heads", "refs/heads/"), fmt("tags", "refs/tags/"), fmt("pulls", "refs/pr/")
    return {"branches": branches, "tags": tags, "converts": [], "pullRequests": pulls}


def commits_info(storage: HubStorage, repo_type: str, repo_id: str, revision: str) -> list[dict]:
    """The body of `GET /api/{type}s/{id}/commits/{rev}`: the first-parent history, newest first."""
    history = storage.history(repo_type, repo_id, storage.resolve(repo_type, repo_id, revision))
    keys = ("id", "title", "message", "date")
    return [{**{k: c[k] for k in keys}, "authors": [{"user": a} for a in c["authors"]]} for c in history]


def with_last_commit(storage: HubStorage, repo_type: str, repo_id: str, sha: str, entries: list[dict]) -> list[dict]:
    """Add `lastCommit` (`id`, `title`, `date`) to `tree`/`paths-info` entries, as `expand=True` asks."""
    last = storage.last_commits(repo_type, repo_id, sha, [e["path"] for e in entries])
    for entry in entries:
        commit = last[entry["path"]]
        entry["lastCommit"] = {"id": commit["id"], "title": commit["title"], "date": commit["date"]}
    return entries


def preupload(storage: HubStorage, tree: dict, files: list[dict], gitignore: str | None) -> list[dict]:
    """Answer of the pre-upload endpoint for files `{"path", "size", "sample" (base64 of the first 512 bytes)}`.

    Each answer has `uploadMode` (see [`HubStorage.upload_mode`]), `shouldIgnore` (from `gitignore` or the repo's
    `.gitignore`) and `oid`, the id of the file already at that path (sha256 if in LFS, else git blob id) that the
    client compares to skip unchanged files.
    """
    out = []
    for item in files if isinstance(files, list) else [files]:
        path = check_repo_path(item.get("path") if isinstance(item, dict) else None)
        try:
            size, sample = int(item.get("size") or 0), base64.b64decode(item.get("sample") or "", validate=True)
        except (ValueError, TypeError) as err:
            raise HubError(400, f"Invalid size or sample for {path}: {err}") from None
        mode = storage.upload_mode(tree, path, size, sample)
        entry = tree.get(path)
        oid = None if entry is None else (entry["lfs"]["oid"] if entry["lfs"] else entry["oid"])
        ignore = storage.should_ignore(tree, path, gitignore)
        out.append({"path": path, "uploadMode": mode, "shouldIgnore": ignore, "oid": oid})
    return out


def lfs_batch(storage: HubStorage, operation: str, objects: list[dict], href: Callable[[str], str]) -> list[dict]:
    """Objects of a Git LFS batch answer (basic transfer); `href(oid)` is the object's URL on the server.

    Uploads of objects already stored get no `actions` (the client skips them); others get `upload` (a `PUT` to
    `href?size=`) and `verify` (a `POST` to `href/verify`). Downloads get a `download` action or a 404 error.
    """
    out = []
    for obj in objects:
        oid, size = obj.get("oid"), obj.get("size")
        item: dict[str, Any] = {"oid": str(oid), "size": size if isinstance(size, int) else 0}
        if not (is_sha256(oid) and isinstance(size, int) and size >= 0):
            item["error"] = {"code": 422, "message": f"Invalid oid {oid!r} or size {size!r}"}
        elif operation == "download":
            if storage.has_lfs(oid):
                item["actions"] = {"download": {"href": href(oid), "header": {}}}
            else:
                item["error"] = {"code": 404, "message": f"Object {oid} does not exist"}
        elif not storage.has_lfs(oid):
            upload = {"href": f"{href(oid)}?size={size}", "header": {}}
            item["actions"] = {"upload": upload, "verify": {"href": f"{href(oid)}/verify", "header": {}}}
        out.append(item)
    return out
