"""The URL map of the loopback Hub: a table of (methods, path pattern) -> handler, and the handlers.

Each handler takes the [`Request`] and the named groups of its pattern (URL-decoded; `type`, `ns` and `name` become
`repo_type` and `repo_id`), reads or changes the state through [`~storage.HubStorage`] and returns a
[`~responses.Response`] built by `responses`. [`match_route`] finds the handler of a request; the server
(`server`) builds the request, calls the handler and writes the answer.

| Methods       | Path                                                        | Handler          |
|---------------|-------------------------------------------------------------|------------------|
| GET           | /api/whoami-v2                                              | `whoami`         |
| POST          | /api/repos/create                                           | `create_repo`    |
| DELETE        | /api/repos/delete                                           | `delete_repo`    |
| POST          | /api/validate-yaml                                          | `validate_yaml`  |
| any           | /api/telemetry/...                                          | `telemetry`      |
| GET           | /api/{type}s/{ns}/{name}[/revision/{rev}]                   | `repo_info`      |
| GET           | /api/{type}s/{ns}/{name}/refs                               | `refs`           |
| GET           | /api/{type}s/{ns}/{name}/discussions                        | `discussions`    |
| POST, DELETE  | /api/{type}s/{ns}/{name}/(branch\\|tag)/{ref}                | `ref`            |
| GET           | /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]                | `tree`           |
| POST          | /api/{type}s/{ns}/{name}/paths-info/{rev}                   | `paths_info`     |
| GET           | /api/{type}s/{ns}/{name}/commits/{rev}                      | `commits`        |
| POST          | /api/{type}s/{ns}/{name}/preupload/{rev}                    | `preupload`      |
| POST          | /api/{type}s/{ns}/{name}/commit/{rev}                       | `commit`         |
| POST          | /[{type}s/]{ns}/{name}.git/info/lfs/objects/batch           | `lfs_batch`      |
| GET, HEAD     | /[{type}s/]{ns}/{name}/resolve/{rev}/{path}                 | `resolve`        |
| PUT           | /_lfs/{oid}                                                 | `lfs_upload`     |
| POST          | /_lfs/{oid}/verify                                          | `lfs_verify`     |
| GET, HEAD     | /_lfs/{oid}                                                 | `lfs_download`   |

A revision in a URL is either URL-encoded in one segment (`refs%2Fpr%2F1`) or `refs/<kind>/<name>` unencoded.
"""

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from . import responses as R
from .storage import LOCAL_USER, HubError, HubStorage

__all__ = ["FAULT_KINDS", "ROUTES", "Request", "Route", "match_route"]

FAULT_KINDS = ("download", "lfs_upload", "commit")
"""Requests the fault injection can cut: file downloads, LFS object uploads and commits."""

_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}


class Request:
    """What a route handler sees of one HTTP request.

    Args:
        method (`str`): `GET`, `HEAD`, `POST`, `PUT` or `DELETE`.
        path (`str`): The URL path (still URL-encoded).
        query (`dict[str, list[str]]`): The parsed query string.
        headers (`Mapping[str, str]`): Request headers (case-insensitive lookup).
        storage ([`~storage.HubStorage`]): The state.
        endpoint (`str`): Base URL of the server, for the URLs handed out.
        tree_page_size (`int`): Entries per page of `tree` listings.
        read_body (`Callable`): Called once with `write(chunk)` to stream the request body to it.
        take_fault (`Callable[[str, int], Optional[int]]`):
            `take_fault(kind, body_size)`: the body bytes to pass before cutting the connection, or `None`.
    """

    def __init__(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: Any,
        *,
        storage: HubStorage,
        endpoint: str,
        tree_page_size: int,
        read_body: Callable[[Callable[[bytes], Any]], None],
        take_fault: Callable[[str, int], int | None],
    ) -> None:
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.storage, self.endpoint, self.tree_page_size = storage, endpoint, tree_page_size
        self.read_body, self.take_fault = read_body, take_fault

    def flag(self, name: str) -> bool:
        """A boolean query parameter (`1`, `true` or `yes`)."""
        return _flag(self.query, name)

    def content_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def body(self) -> bytes:
        chunks: list[bytes] = []
        self.read_body(lambda chunk: chunks.append(bytes(chunk)))
        return b"".join(chunks)

    def json(self) -> dict:
        """The body as a JSON object (`{}` if empty); 400 if it is not one."""
        body = self.body()
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as err:
            raise HubError(400, f"Request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise HubError(400, f"Request body must be a JSON object, got {type(data).__name__}")
        return data

    def cut_body(self, cut: int, write: Callable[[bytes], Any] | None = None) -> None:
        """Receive `cut` bytes of the body (passing them to `write`), then raise [`~responses.DropConnection`]."""
        received = 0

        def take(chunk: bytes) -> None:
            nonlocal received
            if write is not None:
                write(chunk[: cut - received])
            received += len(chunk)
            if received >= cut:
                raise R.DropConnection

        if cut > 0:
            self.read_body(take)
        raise R.DropConnection


Handler = Callable[..., R.Response]


@dataclasses.dataclass(frozen=True)
class Route:
    """Requests with one of `methods` whose whole path matches `pattern` go to `handler(request, **groups)`."""

    methods: frozenset[str]
    pattern: re.Pattern
    handler: Handler


def _flag(query: dict, name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true", "yes")


def _repo_url(req: Request, repo_type: str, repo_id: str) -> str:
    return f"{req.endpoint}/{R.REPO_URL_PREFIX[repo_type]}{repo_id}"


# -- accounts and repositories ----------------------------------------------------------------------------------------
def whoami(req: Request) -> R.Response:
    if not req.headers.get("Authorization"):
        raise HubError(401, "Invalid credentials in Authorization header")
    return R.json_response(R.whoami())


def _repo_key(body: dict) -> tuple[str, str]:
    if not isinstance(body.get("name"), str):
        raise HubError(400, f"Missing or invalid repo 'name' in request body: {body.get('name')!r}")
    return body.get("type") or "model", f"{body.get('organization') or LOCAL_USER}/{body['name']}"


def create_repo(req: Request) -> R.Response:
    body = req.json()
    repo_type, repo_id = _repo_key(body)
    url = _repo_url(req, repo_type, repo_id)
    try:
        private = bool(body.get("private")) or body.get("visibility") == "private"
        req.storage.create_repo(repo_type, repo_id, private=private)
    except HubError as err:
        if err.status != 409:
            raise
        return R.json_response({"error": err.message, "url": url}, 409)  # the client reads `url` on exist_ok
    return R.json_response({"url": url, "name": repo_id, "id": repo_id})


def delete_repo(req: Request) -> R.Response:
    req.storage.delete_repo(*_repo_key(req.json()))
    return R.json_response({})


def validate_yaml(req: Request) -> R.Response:
    content = str(req.json().get("content") or "")
    block = re.match(r"^---[ \t]*\n(.*?)\n?---[ \t]*(\n|$)", content, flags=re.DOTALL)
    if block is not None and block[1].strip() and R.card_data(content) is None:
        message = "Invalid YAML metadata: the block between the '---' lines must be a valid YAML mapping"
        return R.json_response({"errors": [{"message": message}], "warnings": []}, 400)
    return R.json_response({"errors": [], "warnings": []})


def telemetry(req: Request) -> R.Response:
    return R.json_response({})


def repo_info(req: Request, repo_type: str, repo_id: str, revision: str | None = None) -> R.Response:
    return R.json_response(R.repo_info(req.storage, repo_type, repo_id, revision or "main", req.flag("blobs")))


def refs(req: Request, repo_type: str, repo_id: str) -> R.Response:
    return R.json_response(R.refs_info(req.storage, repo_type, repo_id))


def discussions(req: Request, repo_type: str, repo_id: str) -> R.Response:
    # No discussions are kept (pull requests are refs only); transformers lists them to look for a safetensors
    # conversion PR when a repo has only pickled weights.
    req.storage.repo_meta(repo_type, repo_id)  # 404 RepoNotFound for an unknown repo
    return R.json_response({"discussions": [], "count": 0, "start": 0, "numClosedDiscussions": 0})


def ref(req: Request, repo_type: str, repo_id: str, kind: str, ref_name: str) -> R.Response:
    if req.method == "DELETE":
        req.storage.delete_ref(repo_type, repo_id, "heads" if kind == "branch" else "tags", ref_name)
    elif kind == "branch":
        start = req.json().get("startingPoint") or "main"
        req.storage.create_ref(repo_type, repo_id, "heads", ref_name, start)
    else:  # POST /tag/{revision} with {"tag": name, "message": ...}
        tag = req.json().get("tag")
        if not isinstance(tag, str):
            raise HubError(400, f"Missing or invalid 'tag' in request body: {tag!r}")
        req.storage.create_ref(repo_type, repo_id, "tags", tag, ref_name)
    return R.json_response({})


# -- listings ---------------------------------------------------------------------------------------------------------
def tree(req: Request, repo_type: str, repo_id: str, revision: str, path: str | None = None) -> R.Response:
    commit = req.storage.snapshot(repo_type, repo_id, revision)
    paths = R.list_tree(commit["tree"], path or "", req.flag("recursive"))
    expand = req.flag("expand")
    page_size = min(req.tree_page_size, 50) if expand else req.tree_page_size
    raw_cursor = req.query.get("cursor", ["0"])[-1]
    if not raw_cursor.isdigit():
        raise HubError(400, f"Invalid cursor {raw_cursor!r}")
    cursor = int(raw_cursor)
    entries = [R.path_info(commit["tree"], p) for p in paths[cursor : cursor + page_size]]
    if expand:
        entries = R.with_last_commit(req.storage, repo_type, repo_id, commit["id"], entries)
    headers = {}
    if cursor + page_size < len(paths):  # cursor pagination through a `Link` header, as the Hub does
        query = {key: values[-1] for key, values in req.query.items()} | {"cursor": str(cursor + page_size)}
        headers["Link"] = f'<{req.endpoint}{req.path}?{urlencode(query)}>; rel="next"'
    return R.json_response(entries, headers=headers)


def paths_info(req: Request, repo_type: str, repo_id: str, revision: str, path: str | None = None) -> R.Response:
    if req.headers.get("Content-Type", "").startswith("application/json"):
        body = req.json()
        paths, expand = body.get("paths") or [], bool(body.get("expand"))
    else:  # form-encoded, as `HfApi.get_paths_info` sends it
        form = parse_qs(req.body().decode())
        paths, expand = form.get("paths", []), _flag(form, "expand")
    commit = req.storage.snapshot(repo_type, repo_id, revision)
    tree, paths = commit["tree"], [p.strip("/") for p in paths if isinstance(p, str)]
    found = [p for p in paths if p in tree or any(k.startswith(p + "/") for k in tree)]
    entries = [R.path_info(tree, p) for p in found]
    if expand:
        entries = R.with_last_commit(req.storage, repo_type, repo_id, commit["id"], entries)
    return R.json_response(entries)


def commits(req: Request, repo_type: str, repo_id: str, revision: str, path: str | None = None) -> R.Response:
    return R.json_response(R.commits_info(req.storage, repo_type, repo_id, revision))


# -- uploads ----------------------------------------------------------------------------------------------------------
def preupload(req: Request, repo_type: str, repo_id: str, revision: str, path: str | None = None) -> R.Response:
    body = req.json()
    commit = req.storage.snapshot(repo_type, repo_id, revision)
    files = R.preupload(req.storage, commit["tree"], body.get("files") or [], body.get("gitIgnore"))
    return R.json_response({"files": files, "commitOid": commit["id"]})


def commit(req: Request, repo_type: str, repo_id: str, revision: str, path: str | None = None) -> R.Response:
    cut = req.take_fault("commit", req.content_length())
    if cut is not None:  # cut before the commit is applied: nothing becomes visible
        req.cut_body(cut)
    header, operations = R.parse_commit_payload(req.body())
    sha, pr_num = req.storage.commit_files(
        repo_type, repo_id, revision, operations, title=header.get("summary") or "",
        message=header.get("description") or "", parent_commit=header.get("parentCommit"),
        create_pr=req.flag("create_pr"),
    )  # fmt: skip
    return R.json_response(R.commit_answer(_repo_url(req, repo_type, repo_id), sha, pr_num))


def lfs_batch(req: Request, repo_type: str, repo_id: str) -> R.Response:
    req.storage.repo_meta(repo_type, repo_id)  # 404 if the repo does not exist
    body = req.json()
    objects = R.lfs_batch(req.storage, body.get("operation"), body.get("objects") or [], _lfs_href(req))
    headers = {"Content-Type": "application/vnd.git-lfs+json"}
    return R.json_response({"transfer": "basic", "objects": objects}, headers=headers)


def _lfs_href(req: Request) -> Callable[[str], str]:
    return lambda oid: f"{req.endpoint}/_lfs/{oid}"


def lfs_upload(req: Request, oid: str) -> R.Response:
    req.storage.lfs_path(oid)  # 400 for an invalid oid
    raw_size = req.query.get("size", [None])[-1]
    size = int(raw_size) if raw_size and raw_size.isdigit() else None
    cut = req.take_fault("lfs_upload", req.content_length() or size or 0)
    if cut is None:
        req.storage.receive_lfs(oid, size, req.read_body)
    else:  # the partial upload goes to a temporary file that `receive_lfs` removes
        req.storage.receive_lfs(oid, size, lambda write: req.cut_body(cut, write))
    return R.Response(200)


def lfs_verify(req: Request, oid: str) -> R.Response:
    path = req.storage.lfs_path(oid)
    size = req.json().get("size")
    if not path.is_file() or path.stat().st_size != size:
        raise HubError(404, f"LFS object {oid} of size {size} was not uploaded")
    return R.json_response({})


def _download(req: Request, response: R.Response) -> R.Response:
    if req.method == "GET":
        response.cut_after = req.take_fault("download", response.content_length)
    return response


def lfs_download(req: Request, oid: str) -> R.Response:
    path = req.storage.lfs_path(oid)
    if not path.is_file():
        raise HubError(404, f"LFS object {oid} not found")
    headers = {"Content-Type": "application/octet-stream", "ETag": f'"{oid}"'}
    return _download(req, R.file_response(path, path.stat().st_size, headers, req.headers.get("Range")))


# -- downloads --------------------------------------------------------------------------------------------------------
def resolve(req: Request, repo_type: str, repo_id: str, revision: str, path: str | None = None) -> R.Response:
    """`/resolve/`: file content with `X-Repo-Commit`, `ETag` (`X-Linked-Etag`/`-Size` for LFS) and `Range`."""
    commit = req.storage.snapshot(repo_type, repo_id, revision)
    path = path or ""
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
    file = req.storage.file_path(entry)
    return _download(req, R.file_response(file, entry["size"], headers, req.headers.get("Range")))


# -- the table --------------------------------------------------------------------------------------------------------
_API_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_GIT_REPO = r"/(?:(?P<type>models|datasets|spaces)/)?+(?P<ns>[^/]+)/(?P<name>[^/]+?)"  # no type: a model
_REV = r"(?P<revision>refs/[^/]+/[^/]+|[^/]+)(?:/(?P<path>.*))?"
_ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")


def _route(methods: str | tuple[str, ...], pattern: str, handler: Handler) -> Route:
    methods = (methods,) if isinstance(methods, str) else methods
    return Route(frozenset(methods), re.compile(pattern), handler)


ROUTES: list[Route] = [
    _route("GET", r"/api/whoami-v2", whoami),
    _route("POST", r"/api/repos/create", create_repo),
    _route("DELETE", r"/api/repos/delete", delete_repo),
    _route("POST", r"/api/validate-yaml", validate_yaml),
    _route(_ALL_METHODS, r"/api/telemetry(?:/.*)?", telemetry),
    _route("GET", rf"{_API_REPO}(?:/revision(?:/(?P<revision>.+))?)?", repo_info),
    _route("GET", rf"{_API_REPO}/refs", refs),
    _route("GET", rf"{_API_REPO}/discussions", discussions),
    _route(("POST", "DELETE"), rf"{_API_REPO}/(?P<kind>branch|tag)/(?P<ref_name>.+)", ref),
    _route("GET", rf"{_API_REPO}/tree/{_REV}", tree),
    _route("POST", rf"{_API_REPO}/paths-info/{_REV}", paths_info),
    _route("GET", rf"{_API_REPO}/commits/{_REV}", commits),
    _route("POST", rf"{_API_REPO}/preupload/{_REV}", preupload),
    _route("POST", rf"{_API_REPO}/commit/{_REV}", commit),
    _route("POST", rf"{_GIT_REPO}\.git/info/lfs/objects/batch", lfs_batch),
    _route(("GET", "HEAD"), rf"{_GIT_REPO}/resolve/{_REV}", resolve),
    _route("PUT", r"/_lfs/(?P<oid>[^/]+)", lfs_upload),
    _route("POST", r"/_lfs/(?P<oid>[^/]+)/verify", lfs_verify),
    _route(("GET", "HEAD"), r"/_lfs/(?P<oid>[^/]+)", lfs_download),
]


def match_route(method: str, path: str) -> tuple[Handler, dict[str, Any]]:
    """The handler of a request and its keyword arguments (URL-decoded groups); 404 if no route matches.

    Groups `type`, `ns` and `name` become `repo_type` (`"model"` when absent) and `repo_id` (`"ns/name"`).
    """
    for route in ROUTES:
        match = route.pattern.fullmatch(path)
        if match is None or method not in route.methods:
            continue
        groups = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
        if "name" in groups:
            repo_type = _PLURAL[groups.pop("type")] if "type" in groups else "model"
            groups.update(repo_type=repo_type, repo_id=f"{groups.pop('ns')}/{groups.pop('name')}")
        return route.handler, groups
    raise HubError(404, f"Local Hub has no route for {method} {path}")
