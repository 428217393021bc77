"""On-disk storage of the loopback Hub server: repositories, immutable commits, branches, tags and blobs.

Layout under the root directory:

    objects/<git sha1>            content of regular (non-LFS) files, addressed by their git blob id
    lfs/<sha256>                  content of LFS files, addressed by their sha256
    repos/<type>s/<ns>/<name>/
        repo.json                 {"id", "type", "private", "createdAt"}
        refs.json                 {"heads": {name: sha}, "tags": {name: sha}, "pulls": {num: sha}}
        commits/<sha>.json        one immutable snapshot: parents, title, message, date and the full file tree

A tree maps each file path to `{"oid": git blob id, "size": bytes, "lfs": {"oid", "size", "pointerSize"} | None}`.
For an LFS file the blob id is the one of its git-lfs pointer, as on the Hub. Every write happens under one lock and
every file is written atomically (temporary file + `os.replace`), so readers never see half-written state: an LFS
upload is kept only once complete and checked, and a commit becomes visible only when its ref is replaced.

This module is the state only. What the Hub clients see of it (JSON bodies, headers) is in `responses`, which URL
leads where in `routes`, and the HTTP server in `server`.
"""

import datetime
import fnmatch
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "LFS_SIZE_THRESHOLD", "LOCAL_USER", "REPO_TYPES", "HubError", "HubStorage", "check_repo_path", "git_blob_id",
    "is_sha256", "lfs_pointer",
]  # fmt: skip

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
"""Files of this size (bytes) or more go through LFS, like on the Hub (which rejects larger regular files)."""
MAX_REGULAR_FILE_SIZE = LFS_SIZE_THRESHOLD
LOCAL_USER = "local-user"
REPO_TYPES = ("model", "dataset", "space")

_LFS_EXTENSIONS = (
    "7z arrow bin bz2 ckpt ftz gz h5 joblib lfs.* mlmodel model msgpack npy npz onnx ot parquet pb pickle pkl pt pth "
    "rar safetensors tar.* tar tflite tgz wasm xz zip zst"
)
_DATASET_EXTRA_EXTENSIONS = "lz4 mds mp3 ogg wav jpg jpeg png webp mp4 webm"
_ATTRS = "filter=lfs diff=lfs merge=lfs -text"


def _default_gitattributes(repo_type: str) -> str:
    """The `.gitattributes` of the Hub's initial commit (same LFS patterns)."""
    extensions = _LFS_EXTENSIONS.split() + (_DATASET_EXTRA_EXTENSIONS.split() if repo_type == "dataset" else [])
    lines = [f"*.{ext} {_ATTRS}" for ext in extensions]
    lines += [f"saved_model/**/* {_ATTRS}", f"*tfevents* {_ATTRS}"]
    return "\n".join(lines) + "\n"


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # all used with fullmatch
_SHA_PREFIX_RE = re.compile(r"[0-9a-f]{7,40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class HubError(Exception):
    """An error the server answers with an HTTP status and, for 404s, the Hub's `X-Error-Code`.

    Args:
        status (`int`): HTTP status code, e.g. 404.
        message (`str`): Human-readable message, sent in the JSON body and the `X-Error-Message` header.
        code (`str`, *optional*): `RepoNotFound`, `RevisionNotFound` or `EntryNotFound`, as the Hub sends them.
        headers (`dict[str, str]`, *optional*): Extra response headers, e.g. `X-Repo-Commit` on a missing file.
    """

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})


def git_blob_id(content: bytes) -> str:
    """Git object id (sha1) of a blob, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in git for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return "".join(out)


def _path_matches(pattern: str, path: str) -> bool:
    """Git-style match: a pattern without `/` matches the base name at any depth, otherwise the whole path."""
    pattern = pattern.strip().replace("[[:space:]]", " ")
    if "/" not in pattern:
        return fnmatch.fnmatchcase(posixpath.basename(path), pattern)
    return re.fullmatch(_glob_regex(pattern.lstrip("/")), path) is not None


def _lfs_patterns(gitattributes: str) -> list[str]:
    return [
        line.split()[0]
        for line in gitattributes.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "filter=lfs" in line.split()[1:]
    ]


def _is_ignored(gitignore: str, path: str) -> bool:
    ignored = False
    for line in gitignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        # a matching directory ignores all it contains; `dir/` patterns only match directories
        parts = path.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts))] + ([] if pattern.endswith("/") else [path])
        if any(_path_matches(pattern.rstrip("/"), candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut by the 512-byte sample is not binary
        return err.start < len(sample) - 3
    return False


def is_sha256(oid: Any) -> bool:
    """Whether `oid` is a sha256 as LFS objects are named: 64 lowercase hexadecimal characters."""
    return isinstance(oid, str) and _SHA256_RE.fullmatch(oid) is not None


def check_repo_path(path: Any) -> str:
    """Validate a path inside a repository (relative, no `..`, no empty segment)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")) or path.startswith(".git/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


class HubStorage:
    """Repositories on disk, with git-like immutable commits.

    Args:
        root (`str` or `os.PathLike`): Directory holding everything (created if missing).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        for sub in ("objects", "lfs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # -- repositories ---------------------------------------------------------------------------------------------
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}, expected one of {REPO_TYPES}")
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME_RE.fullmatch(p) and "--" not in p and ".." not in p for p in parts):
            raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name' of [A-Za-z0-9._-]")
        return self.root / "repos" / f"{repo_type}s" / parts[0] / parts[1]

    def _existing_repo_dir(self, repo_type: str, repo_id: str) -> Path:
        path = self._repo_dir(repo_type, repo_id)
        if not (path / "repo.json").is_file():
            raise HubError(404, f"Repository {repo_type}s/{repo_id} not found", "RepoNotFound")
        return path

    def repo_meta(self, repo_type: str, repo_id: str) -> dict:
        return json.loads((self._existing_repo_dir(repo_type, repo_id) / "repo.json").read_text())

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> None:
        """Create a repository with the Hub's initial commit (a default `.gitattributes`); 409 if it exists."""
        with self.lock:
            path = self._repo_dir(repo_type, repo_id)
            if (path / "repo.json").is_file():
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            attrs = _default_gitattributes(repo_type).encode()
            tree = {".gitattributes": {"oid": self._store_blob(attrs), "size": len(attrs), "lfs": None}}
            sha = self._write_commit(path, [], tree, "initial commit", "")
            _write_json(path / "refs.json", {"heads": {"main": sha}, "tags": {}, "pulls": {}})
            meta = {"id": repo_id, "type": repo_type, "private": private, "createdAt": _now()}
            _write_json(path / "repo.json", meta)

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            shutil.rmtree(self._existing_repo_dir(repo_type, repo_id))

    # -- objects --------------------------------------------------------------------------------------------------
    def _store_blob(self, content: bytes) -> str:
        oid = git_blob_id(content)
        path = self.root / "objects" / oid
        if not path.exists():
            _write_atomic(path, content)
        return oid

    def lfs_path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise HubError(400, f"Invalid LFS oid {sha256!r}: expected 64 lowercase hex characters")
        return self.root / "lfs" / sha256

    def has_lfs(self, sha256: str) -> bool:
        return self.lfs_path(sha256).is_file()

    def receive_lfs(self, oid: str, size: int | None, read_into: Callable[[Callable[[bytes], Any]], None]) -> None:
        """Store an LFS object that `read_into(write)` streams; it is kept only if its sha256 and size match.

        Args:
            oid (`str`): Expected sha256 (64 hex characters).
            size (`int`, *optional*): Expected size in bytes.
            read_into (`Callable`): Called once with a `write(chunk: bytes)` function, to pass the content.
        """
        target, digest, received = self.lfs_path(oid), hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as f:

                def write(chunk: bytes) -> None:
                    nonlocal received
                    digest.update(chunk)
                    f.write(chunk)
                    received += len(chunk)

                read_into(write)
            if digest.hexdigest() != oid or (size is not None and received != size):
                got = f"{received} bytes with sha256 {digest.hexdigest()}"
                raise HubError(400, f"Uploaded content ({got}) does not match oid {oid} and size {size}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def file_path(self, entry: dict) -> Path:
        """Where the content of a tree entry lies on disk."""
        if entry["lfs"] is not None:
            return self.lfs_path(entry["lfs"]["oid"])
        return self.root / "objects" / entry["oid"]

    # -- commits and refs -----------------------------------------------------------------------------------------
    def _write_commit(self, repo_dir: Path, parents: list[str], tree: dict, title: str, message: str) -> str:
        body = {"parents": parents, "tree": tree, "title": title, "message": message, "date": _now()}
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        body.update(id=sha, authors=[LOCAL_USER])
        _write_json(repo_dir / "commits" / f"{sha}.json", body)
        return sha

    def refs(self, repo_type: str, repo_id: str) -> dict:
        return json.loads((self._existing_repo_dir(repo_type, repo_id) / "refs.json").read_text())

    def commit(self, repo_type: str, repo_id: str, sha: str) -> dict:
        """The commit object `{"id", "parents", "tree", "title", "message", "date", "authors"}`."""
        path = self._existing_repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
        if not path.is_file():
            raise HubError(404, f"Commit {sha} not found in {repo_id}", "RevisionNotFound")
        return json.loads(path.read_text())

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        """Commit sha of a branch, tag, `refs/heads|tags|pr/...` name or (possibly abbreviated) commit sha."""
        refs = self.refs(repo_type, repo_id)
        for prefix, kind in (("refs/heads/", "heads"), ("refs/tags/", "tags"), ("refs/pr/", "pulls")):
            if revision.startswith(prefix) and revision[len(prefix) :] in refs[kind]:
                return refs[kind][revision[len(prefix) :]]
        if revision in refs["heads"]:
            return refs["heads"][revision]
        if revision in refs["tags"]:
            return refs["tags"][revision]
        if _SHA_PREFIX_RE.fullmatch(revision):
            commits_dir = self._existing_repo_dir(repo_type, repo_id) / "commits"
            found = [p.stem for p in commits_dir.glob(f"{revision}*.json")]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def snapshot(self, repo_type: str, repo_id: str, revision: str) -> dict:
        """The commit a revision points to (see [`HubStorage.commit`])."""
        return self.commit(repo_type, repo_id, self.resolve(repo_type, repo_id, revision))

    def _branch_ref(self, refs: dict, revision: str) -> tuple[str, str]:
        """(kind, name) of the branch or pull-request ref a commit can be pushed to."""
        if revision.startswith("refs/pr/") and revision[8:] in refs["pulls"]:
            return "pulls", revision[8:]
        name = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
        if name in refs["heads"]:
            return "heads", name
        raise HubError(404, f"Invalid rev id: {revision} (commits go to an existing branch)", "RevisionNotFound")

    def history(self, repo_type: str, repo_id: str, sha: str) -> list[dict]:
        """Commits reachable from `sha` by first parents, newest first."""
        out = []
        while True:
            commit = self.commit(repo_type, repo_id, sha)
            out.append(commit)
            if not commit["parents"]:
                return out
            sha = commit["parents"][0]

    def last_commits(self, repo_type: str, repo_id: str, sha: str, paths: list[str]) -> dict[str, dict]:
        """For each path (file or directory), the newest commit that changed it."""
        history = self.history(repo_type, repo_id, sha)
        trees = [c["tree"] for c in history] + [{}]

        def view(tree: dict, path: str) -> Any:
            if path in tree:
                return tree[path]
            return sorted((k, v["oid"]) for k, v in tree.items() if k.startswith(path + "/"))

        out = {}
        for path in paths:
            for commit, tree, older in zip(history, trees[:-1], trees[1:], strict=True):
                if view(tree, path) != view(older, path):
                    out[path] = commit
                    break
            else:
                out[path] = history[-1]
        return out

    def commit_files(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        operations: list[dict],
        *,
        title: str,
        message: str = "",
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> tuple[str, int | None]:
        """Apply operations and record a new commit on a branch (or on a new pull-request ref).

        Args:
            operations (`list[dict]`): `{"op": "file", "path", "content": bytes}`, `{"op": "lfsFile", "path", "oid",
                "size"}`, `{"op": "deletedFile", "path"}` or `{"op": "deletedFolder", "path"}`.
            parent_commit (`str`, *optional*): If given and not the head of the branch, the commit fails with 412.
            create_pr (`bool`): Commit onto a new `refs/pr/<n>` ref forked from `revision`.

        Returns:
            `tuple[str, Optional[int]]`: the new commit sha and the pull-request number (or `None`).
        """
        with self.lock:
            repo_dir = self._existing_repo_dir(repo_type, repo_id)
            refs = self.refs(repo_type, repo_id)
            if create_pr:
                head, kind, name = self.resolve(repo_type, repo_id, revision), "pulls", str(len(refs["pulls"]) + 1)
            else:
                kind, name = self._branch_ref(refs, revision)
                head = refs[kind][name]
            if parent_commit is not None and parent_commit != head:
                raise HubError(412, f"A commit has happened since. Parent commit {parent_commit} is not {head}.")
            tree = dict(self.commit(repo_type, repo_id, head)["tree"])
            new_lfs_paths = []
            for op in operations:
                path = check_repo_path(op.get("path"))
                if op["op"] == "file":
                    content = op["content"]
                    if len(content) > MAX_REGULAR_FILE_SIZE:
                        reason = "Your push was rejected because it contains files larger than 10 MiB"
                        raise HubError(400, f"{reason}: {path}")
                    tree[path] = {"oid": self._store_blob(content), "size": len(content), "lfs": None}
                elif op["op"] == "lfsFile":
                    if not self.has_lfs(op["oid"]):
                        raise HubError(422, f"LFS object {op['oid']} of {path} was not uploaded")
                    size = self.lfs_path(op["oid"]).stat().st_size
                    pointer = lfs_pointer(op["oid"], size)
                    lfs = {"oid": op["oid"], "size": size, "pointerSize": len(pointer)}
                    tree[path] = {"oid": git_blob_id(pointer), "size": size, "lfs": lfs}
                    new_lfs_paths.append(path)
                elif op["op"] == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif op["op"] == "deletedFolder":
                    inside = [p for p in tree if p.startswith(path.rstrip("/") + "/")]
                    if not inside:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in inside:
                        del tree[p]
                else:
                    raise HubError(400, f"Unknown commit operation {op['op']!r}")
            for path in tree:  # as in git, a path cannot be both a file and a directory
                parents = path.split("/")
                for parent in ("/".join(parents[:i]) for i in range(1, len(parents))):
                    if parent in tree:
                        raise HubError(400, f"Cannot commit {path}: {parent} is a file")
            self._track_lfs(tree, new_lfs_paths)
            sha = self._write_commit(repo_dir, [head], tree, title, message)
            refs[kind][name] = sha
            _write_json(repo_dir / "refs.json", refs)
            return sha, (int(name) if kind == "pulls" else None)

    def _track_lfs(self, tree: dict, lfs_paths: list[str]) -> None:
        """Add LFS files that no `.gitattributes` rule covers to `.gitattributes`, as the Hub does."""
        attrs = self.read_text(tree, ".gitattributes") or ""
        patterns = _lfs_patterns(attrs)
        missing = [p for p in lfs_paths if not any(_path_matches(pat, p) for pat in patterns)]
        if missing:
            attrs = attrs + ("" if attrs.endswith("\n") or not attrs else "\n")
            attrs += "".join(f"{p.replace(' ', '[[:space:]]')} {_ATTRS}\n" for p in missing)
            data = attrs.encode()
            tree[".gitattributes"] = {"oid": self._store_blob(data), "size": len(data), "lfs": None}

    def read_text(self, tree: dict, path: str) -> str | None:
        entry = tree.get(path)
        if entry is None or entry["lfs"] is not None:
            return None
        return self.file_path(entry).read_bytes().decode("utf-8", errors="replace")

    def upload_mode(self, tree: dict, path: str, size: int, sample: bytes) -> str:
        """`"lfs"` for files matched by `.gitattributes`, of 10 MiB or more, or binary-looking; else `"regular"`."""
        patterns = _lfs_patterns(self.read_text(tree, ".gitattributes") or "")
        if size >= LFS_SIZE_THRESHOLD or any(_path_matches(p, path) for p in patterns) or _looks_binary(sample):
            return "lfs"
        return "regular"

    def should_ignore(self, tree: dict, path: str, gitignore: str | None) -> bool:
        gitignore = gitignore if gitignore is not None else self.read_text(tree, ".gitignore")
        return bool(gitignore) and _is_ignored(gitignore, path)

    # -- branches and tags ----------------------------------------------------------------------------------------
    def create_ref(self, repo_type: str, repo_id: str, kind: str, name: str, target: str) -> None:
        """Create a branch (`kind="heads"`) or tag (`kind="tags"`) at revision `target`; 409 if it exists."""
        with self.lock:
            if not name or name.startswith(("/", "refs/")) or ".." in name or name.endswith("/"):
                raise HubError(400, f"Invalid {'branch' if kind == 'heads' else 'tag'} name {name!r}")
            refs = self.refs(repo_type, repo_id)
            if name in refs[kind]:
                raise HubError(409, f"Reference {name} already exists")
            refs[kind][name] = self.resolve(repo_type, repo_id, target)
            _write_json(self._existing_repo_dir(repo_type, repo_id) / "refs.json", refs)

    def delete_ref(self, repo_type: str, repo_id: str, kind: str, name: str) -> None:
        with self.lock:
            refs = self.refs(repo_type, repo_id)
            if kind == "heads" and name == "main":
                raise HubError(403, "Cannot delete the default branch 'main'")
            if refs[kind].pop(name, None) is None:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            _write_json(self._existing_repo_dir(repo_type, repo_id) / "refs.json", refs)
