"""Loopback imitation of the Hugging Face Hub HTTP API, for tests (standard library only).

Enough of the Hub for the real `huggingface_hub` client, with `HF_ENDPOINT=<server.url>` and
`HF_HUB_DISABLE_XET=1`, to create repos, commit (regular and LFS files), manage branches, tags and
pull requests, and download single files or snapshots.

    with HubServer(root=tmp_path) as hub:  # or hub.start() ... hub.stop()
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_x", ...}
        hub.faults.append(Fault("drop", path="model.safetensors", after=1000))
        hub.storage.tamper("model", "user/repo", "model.safetensors")
        assert hub.count("POST", "/preupload/") == 1

Manual use: python tests/fakes/hub_server.py --port 8080 --root /tmp/hub
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

# The Hub's default .gitattributes, created by a repo's "initial commit" (byte-identical: its git
# blob id is the familiar a6344aac...). Its patterns decide "lfs" vs "regular" at preupload.
LFS_PATTERNS = (  # noqa: SIM905 (one string reads better than 35 list items)
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack "
    "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors "
    "saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_THRESHOLD = 10 * 1024 * 1024  # above 10 MB a file goes to LFS whatever its name
REPO_ID_RE = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", re.ASCII)  # the client's rule
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_ACTIONS = {"revision", "tree", "refs", "commits", "commit", "preupload", "branch", "tag"}


class HubError(Exception):
    """An error answered like the Hub does: X-Error-Code/X-Error-Message + {"error": message}."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    return pointer.encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def check_repo_id(repo_id: str) -> None:
    bad = "--" in repo_id or ".." in repo_id or repo_id.endswith(".git")
    if bad or not REPO_ID_RE.fullmatch(repo_id):
        raise HubError(400, f"Invalid repo id: '{repo_id}'")


class HubStorage:
    """Repos, refs and immutable commits in one JSON state file; contents as sha256-named blobs.

    A commit is {"id", "parents", "title", "message", "date", "author", "files"} where files maps
    every path to {"sha256", "size", "lfs", "oid"}: a full snapshot, so an older commit stays
    downloadable whatever happens to branches later. "oid" is the git blob id (of the LFS pointer
    for LFS files), as listed by the Hub.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.blob_dir = os.path.join(self.root, "blobs")
        os.makedirs(self.blob_dir, exist_ok=True)
        self.state_path = os.path.join(self.root, "state.json")
        self.lock = threading.RLock()
        self.repos: dict[str, dict] = {}  # "model:user/name" -> repo record
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.repos = json.load(f)

    def _save(self) -> None:
        with open(self.state_path + ".tmp", "w") as f:
            json.dump(self.repos, f)
        os.replace(self.state_path + ".tmp", self.state_path)  # atomic: never half a state file

    # -- blobs
    def blob_path(self, sha256: str) -> str:
        return os.path.join(self.blob_dir, sha256)

    def blob_size(self, sha256: str) -> int | None:
        path = self.blob_path(sha256)
        return os.path.getsize(path) if os.path.exists(path) else None

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if self.blob_size(sha) is None:
            tmp = f"{self.blob_path(sha)}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.blob_path(sha))
        return sha

    def read_blob(self, sha256: str, start: int = 0, end: int | None = None) -> bytes:
        with open(self.blob_path(sha256), "rb") as f:
            f.seek(start)
            return f.read(-1 if end is None else end - start)

    def tamper(self, repo_type: str, repo_id: str, path: str, revision="main", data=None) -> str:
        """Overwrite a stored blob in place (default: flip its first byte, same size), so the bytes
        served no longer match the advertised ETag/sha256. Returns that sha256. Blobs are shared:
        every commit holding this content is affected."""
        with self.lock:
            repo = self.get_repo(repo_type, repo_id, authorized=True)
            sha = self.file_entry(repo, self.resolve(repo, revision), path)["sha256"]
        old = self.read_blob(sha)
        with open(self.blob_path(sha), "wb") as f:
            f.write(data if data is not None else bytes([old[0] ^ 0xFF]) + old[1:])
        return sha

    # -- repos, refs, commits
    def get_repo(self, repo_type: str, repo_id: str, authorized: bool) -> dict:
        repo = self.repos.get(f"{repo_type}:{repo_id}")
        # A private repo is invisible without a token, not "forbidden".
        if repo is None or (repo["private"] and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> bool:
        with self.lock:
            if f"{repo_type}:{repo_id}" in self.repos:
                return False
            repo = {"type": repo_type, "id": repo_id, "private": private, "created": now_iso()}
            repo.update(commits={}, heads={}, tags={}, prs={}, lfs=[])
            self.repos[f"{repo_type}:{repo_id}"] = repo
            # Like the Hub: a new repo already has a commit, holding the default .gitattributes.
            ops = [("file", ".gitattributes", GITATTRIBUTES)]
            self.commit(repo, "main", ops, "initial commit", "", author)
            return True

    def resolve(self, repo: dict, revision: str) -> str:
        """Branch, tag, refs/pr/N, refs/heads/X, refs/tags/X or full commit sha -> commit id."""
        prefixes = [("refs/heads/", "heads"), ("refs/tags/", "tags"), ("refs/pr/", "prs")]
        for prefix, table in [*prefixes, ("", "heads"), ("", "tags")]:
            name = revision[len(prefix) :]
            if revision.startswith(prefix) and name in repo[table]:
                return repo[table][name]
        if revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def file_entry(self, repo: dict, commit_id: str, path: str) -> dict:
        entry = repo["commits"][commit_id]["files"].get(path)
        if entry is None:  # X-Repo-Commit lets the client cache the absence (.no_exist)
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit_id})
        return entry

    def lfs_patterns(self, repo: dict, commit_id: str) -> list[str]:
        entry = repo["commits"][commit_id]["files"].get(".gitattributes")
        text = self.read_blob(entry["sha256"]).decode(errors="replace") if entry else ""
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]

    def commit(self, repo, branch, ops, title, message, author, parent=None, create_pr=False):
        """Apply ops on top of `parent` (default: the head of `branch`), then move the branch, or
        open refs/pr/N if `create_pr`. Returns (commit id, PR number or None). An op is one of
        ("file", path, bytes), ("lfs", path, sha256, size), ("delete", path) and
        ("delete_folder", path)."""
        with self.lock:
            is_pr = branch.startswith("refs/pr/")
            table, name = ("prs", branch[8:]) if is_pr else ("heads", branch)
            head = repo[table].get(name)
            if head is None and repo["commits"]:  # tags and commit shas are not committable
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent is not None and not create_pr and parent != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            base = parent or head
            if base is not None and base not in repo["commits"]:
                raise HubError(404, f"Invalid rev id: {base}", "RevisionNotFound")
            files = dict(repo["commits"][base]["files"]) if base else {}
            for kind, path, *args in ops:
                if kind == "file":
                    sha, size, oid = self.put_blob(args[0]), len(args[0]), git_blob_oid(args[0])
                    files[path] = {"sha256": sha, "size": size, "lfs": False, "oid": oid}
                elif kind == "lfs":
                    sha, size = args[0], self.blob_size(args[0])
                    if size is None or args[1] not in (None, size):
                        raise HubError(400, f"LFS object {sha} for '{path}' was not uploaded")
                    oid = git_blob_oid(lfs_pointer(sha, size))
                    files[path] = {"sha256": sha, "size": size, "lfs": True, "oid": oid}
                    repo["lfs"].append(sha)
                elif kind == "delete" and files.pop(path, None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif kind == "delete_folder":
                    for p in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                        del files[p]
            record = {"parents": [base] if base else [], "title": title, "message": message}
            record.update(date=now_iso(), author=author, files=files)
            # A sha1 over the content plus a nonce: 40 hex like git, unique even for equal commits.
            nonce = json.dumps([record, time.time_ns()], sort_keys=True).encode()
            record["id"] = commit_id = hashlib.sha1(nonce).hexdigest()
            repo["commits"][commit_id] = record
            pr_num = len(repo["prs"]) + 1 if create_pr else None
            if create_pr:
                repo["prs"][str(pr_num)] = commit_id
            else:
                repo[table][name] = commit_id
            self._save()
            return commit_id, pr_num

    def set_ref(self, repo: dict, table: str, name: str, target: str | None) -> None:
        """Create (target = commit id) or delete (target = None) a branch ("heads") or tag."""
        with self.lock:
            if target is None and repo[table].pop(name, None) is None:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if target is not None and name in repo[table]:
                raise HubError(409, f"Reference {name} already exists")
            if target is not None:
                repo[table][name] = target
            self._save()


@dataclass
class Fault:
    """One injected failure on file downloads (/resolve and the fake CDN).

    kind="drop":   headers, then the body up to absolute file offset `after`, then the connection is
                   cut; a resumed request (Range: bytes=N-, N >= after) gets headers and no body.
    kind="hang":   headers and `after` bytes, a stall of `seconds`, then the rest if the client is
                   still there. On HEAD: stall, then answer.
    kind="status": answer `status` (e.g. 503) instead of the file.
    path=None matches any file of any repo; times=None keeps the fault forever.
    """

    kind: str
    path: str | None = None
    method: str = "GET"
    after: int = 0
    seconds: float = 0.0
    status: int = 503
    times: int | None = 1


class RequestRecord(tuple):
    """A (method, path) pair that also carries `.query` (raw) and `.headers` (lower-case names)."""

    def __new__(cls, method: str, path: str, query: str, headers: dict):
        record = super().__new__(cls, (method, path))
        record.query, record.headers = query, headers
        return record


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: _Server

    def log_message(self, *args) -> None:  # quiet: the request log is `hub.requests`
        pass

    def setup(self) -> None:  # track open keep-alive connections, for stop() to close them
        super().setup()
        self.server.hub._conns.add(self.connection)

    def finish(self) -> None:
        self.server.hub._conns.discard(self.connection)
        super().finish()

    def _handle(self) -> None:
        self._dispatch(self.command)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    # -- plumbing
    def _send(self, status: int, body: bytes | dict | list = b"", headers=None) -> None:
        headers = dict(headers or {})
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        hub.requests.append(RequestRecord(method, url.path, url.query, headers))
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # Always drain the body, for keep-alive (the client never sends chunked bodies).
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.base = f"http://{self.headers.get('Host', hub.host)}"
        # Split before unquoting: a revision's quoted "/" (refs%2Fpr%2F1) stays in one segment.
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        try:
            self._check_token()
            self._route(method, segs)
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(e.status, {"error": e.message}, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the fake must be loud, not a hang
            self._send(500, {"error": f"{type(e).__name__}: {e}"})

    def _check_token(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        tokens = self.server.hub.tokens
        if self.token and tokens is not None and self.token not in tokens:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _require_write(self) -> None:
        if not self.token:
            raise HubError(401, "Invalid username or password.")

    @property
    def username(self) -> str:
        tokens = self.server.hub.tokens
        if isinstance(tokens, dict) and self.token in tokens:
            return tokens[self.token]
        return self.server.hub.username

    def _json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Body is not valid JSON") from None

    def _repo(self, repo_type: str, repo_id: str) -> dict:
        check_repo_id(repo_id)
        return self.server.hub.storage.get_repo(repo_type, repo_id, authorized=bool(self.token))

    def _route(self, method: str, segs: list[str]) -> None:
        if segs[:2] == ["api", "whoami-v2"]:
            self._require_write()
            auth = {"type": "access_token", "accessToken": {"role": "write"}}
            user = {"type": "user", "name": self.username, "orgs": [], "auth": auth}
            return self._send(200, user)
        if segs[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if segs[:2] == ["api", "agent-harnesses"]:  # the client detects AI agents with this list
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        if segs[:2] == ["api", "validate-yaml"]:  # create_commit calls it when README.md changes
            return self._send(200, {"errors": [], "warnings": []})
        if len(segs) >= 3 and segs[0] == "api" and segs[1] in TYPES:
            rest = segs[2:]  # "ns/name/..." or a canonical "name/..."
            n = 2 if len(rest) >= 2 and rest[1] not in API_ACTIONS else 1
            return self._api(method, TYPES[segs[1]], "/".join(rest[:n]), rest[n:])
        if segs[0] == "cdn-lfs" and method in ("GET", "HEAD") and len(segs) == 2:
            return self._cdn(method, segs[1])
        if segs[0] == "lfs-upload" and method == "PUT" and len(segs) == 2:
            return self._lfs_put(segs[1])
        # [datasets/|spaces/]{repo_id}/resolve/{rev}/{path} and {repo_id}.git/info/lfs/objects/...
        repo_type = "model"
        if segs[0] in ("datasets", "spaces"):
            repo_type, segs = TYPES[segs[0]], segs[1:]
        for n in (1, 2):  # the repo id has one or two segments
            repo_id = "/".join(segs[:n])
            if segs[n : n + 1] == ["resolve"] and len(segs) >= n + 3 and method in ("GET", "HEAD"):
                rev, path = segs[n + 1], "/".join(segs[n + 2 :])
                return self._resolve(method, repo_type, repo_id, rev, path)
            if repo_id.endswith(".git") and segs[n : n + 3] == ["info", "lfs", "objects"]:
                return self._lfs_batch(repo_type, repo_id[:-4], segs[n + 3 :])
        raise HubError(404, f"Unknown endpoint: {method} {self.path}")

    # -- /api/repos/create and /api/{type}s/{repo_id}/...
    def _create_repo(self) -> None:
        self._require_write()
        body = self._json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.username}/{body.get('name', '')}"
        check_repo_id(repo_id)
        private = body.get("visibility") == "private" or bool(body.get("private"))
        url = f"{self.base}/{URL_PREFIX[repo_type]}{repo_id}"
        if not self.server.hub.storage.create_repo(repo_type, repo_id, private, self.username):
            # exist_ok=True swallows the 409 but then reads "url" from this very body
            msg = f"You already created this {repo_type} repo"
            return self._send(409, {"error": msg, "url": url}, {"X-Error-Message": msg})
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _api(self, method: str, repo_type: str, repo_id: str, tail: list[str]) -> None:
        storage = self.server.hub.storage
        repo = self._repo(repo_type, repo_id)
        action, rev = [*tail, "main"][:2] if tail else ("info", "main")
        if method == "GET" and action in ("info", "revision"):
            return self._send(200, self._repo_info(repo, storage.resolve(repo, rev)))
        if method == "GET" and action == "tree":
            return self._send(200, self._tree(repo, storage.resolve(repo, rev), "/".join(tail[2:])))
        if method == "GET" and action == "refs":
            return self._send(200, self._refs(repo))
        if method == "GET" and action == "commits":
            commit_id, out = storage.resolve(repo, rev), []
            while commit_id:  # first-parent history, newest first
                c = repo["commits"][commit_id]
                out.append({k: c[k] for k in ("id", "title", "message", "date")})
                out[-1]["authors"] = [{"user": c["author"]}]
                commit_id = c["parents"][0] if c["parents"] else None
            return self._send(200, out)
        if method == "POST" and action == "preupload":
            self._require_write()
            return self._preupload(repo, storage.resolve(repo, rev))
        if method == "POST" and action == "commit":
            self._require_write()
            return self._commit(repo, rev)
        if action in ("branch", "tag") and method in ("POST", "DELETE"):
            self._require_write()
            table = "heads" if action == "branch" else "tags"
            if method == "DELETE":
                storage.set_ref(repo, table, rev, None)
            elif action == "branch":  # POST /branch/{name} {"startingPoint": rev}
                target = storage.resolve(repo, self._json().get("startingPoint", "main"))
                storage.set_ref(repo, table, rev, target)
            else:  # POST /tag/{revision} {"tag": name}
                storage.set_ref(repo, table, self._json()["tag"], storage.resolve(repo, rev))
            return self._send(200, {})
        raise HubError(404, f"Unknown endpoint: {method} {self.path}")

    @staticmethod
    def _lfs_info(e: dict) -> dict:
        return {"size": e["size"], "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}

    def _repo_info(self, repo: dict, commit_id: str) -> dict:
        files = repo["commits"][commit_id]["files"]
        siblings = [{"rfilename": path} for path in sorted(files)]
        if self.query.get("blobs", "").lower() in ("1", "true"):  # files_metadata=True
            for sib in siblings:
                e = files[sib["rfilename"]]
                sib.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    sib["lfs"] = {"sha256": e["sha256"], **self._lfs_info(e)}
        info = {"id": repo["id"], "author": repo["id"].split("/")[0], "sha": commit_id}
        info.update(private=repo["private"], disabled=False, gated=False, siblings=siblings)
        info.update(createdAt=repo["created"], lastModified=repo["commits"][commit_id]["date"])
        return info

    def _tree(self, repo: dict, commit_id: str, prefix: str) -> list[dict]:
        files = repo["commits"][commit_id]["files"]
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        base = prefix.rstrip("/") + "/" if prefix else ""
        if prefix in files or (base and not any(p.startswith(base) for p in files)):
            raise HubError(404, f"Entry not found: {prefix} is not a folder", "EntryNotFound")
        out, dirs = [], set()
        for path in sorted(p for p in files if p.startswith(base)):
            parts = path[len(base) :].split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                dirs.add(base + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                e = files[path]
                out.append({"type": "file", "oid": e["oid"], "size": e["size"], "path": path})
                if e["lfs"]:
                    out[-1]["lfs"] = {"oid": e["sha256"], **self._lfs_info(e)}
        for d in sorted(dirs):
            content = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(d + "/"))
            tree_oid = hashlib.sha1(json.dumps(content).encode()).hexdigest()
            out.append({"type": "directory", "oid": tree_oid, "size": 0, "path": d})
        return out

    def _refs(self, repo: dict) -> dict:
        def refs(table: str, prefix: str) -> list[dict]:
            return [
                {"name": prefix + n if table == "prs" else n, "ref": prefix + n, "targetCommit": c}
                for n, c in sorted(repo[table].items())
            ]

        with self.server.hub.storage.lock:  # a concurrent commit may add refs meanwhile
            out = {"branches": refs("heads", "refs/heads/"), "tags": refs("tags", "refs/tags/")}
            out["converts"] = []
            if self.query.get("include_prs"):
                out["pullRequests"] = refs("prs", "refs/pr/")
        return out

    def _preupload(self, repo: dict, commit_id: str) -> None:
        body = self._json()
        patterns = self.server.hub.storage.lfs_patterns(repo, commit_id)
        ignored = [p.strip() for p in body.get("gitIgnore", "").splitlines()]
        ignored = [p for p in ignored if p and not p.startswith("#")]
        files = repo["commits"][commit_id]["files"]
        out = []
        for f in body.get("files", []):
            path, sample = f["path"], base64.b64decode(f.get("sample", ""))
            name = path.rsplit("/", 1)[-1]
            # LFS: big, or binary-looking (NUL in the first 512 bytes), or a .gitattributes pattern
            lfs = f.get("size", 0) > LFS_THRESHOLD or b"\0" in sample
            lfs = lfs or any(fnmatch.fnmatch(path if "/" in p else name, p) for p in patterns)
            old = files.get(path)
            # "oid" lets the client skip unchanged files: sha256 if LFS, else the git blob id.
            oid = (old["sha256"] if old["lfs"] else old["oid"]) if old else None
            ignore = any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in ignored)
            mode = "lfs" if lfs else "regular"
            out.append({"path": path, "uploadMode": mode, "oid": oid, "shouldIgnore": ignore})
        self._send(200, {"files": out, "commitOid": commit_id})

    def _commit(self, repo: dict, revision: str) -> None:
        header, ops = {}, []
        for line in filter(bytes.strip, self.body.splitlines()):  # NDJSON {"key", "value"} lines
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                ops.append(("file", value["path"], base64.b64decode(value["content"])))
            elif key == "lfsFile":
                ops.append(("lfs", value["path"], value["oid"], value.get("size")))
            elif key in ("deletedFile", "deletedFolder"):
                kind = "delete" if key == "deletedFile" else "delete_folder"
                ops.append((kind, value["path"]))
            else:
                raise HubError(400, f"Unknown commit operation '{key}'")
        title, message = header.get("summary", ""), header.get("description", "")
        parent, create_pr = header.get("parentCommit"), self.query.get("create_pr") == "1"
        storage = self.server.hub.storage
        args = (repo, revision, ops, title, message, self.username, parent, create_pr)
        commit_id, pr_num = storage.commit(*args)
        url = f"{self.base}/{URL_PREFIX[repo['type']]}{repo['id']}"
        out = {"success": True, "commitOid": commit_id, "commitUrl": f"{url}/commit/{commit_id}"}
        out["pullRequestUrl"] = f"{url}/discussions/{pr_num}" if pr_num else None
        self._send(200, out)

    # -- LFS: batch API, signed upload URL (stands for S3), verify
    def _sign(self, oid: str) -> str:
        return hmac.new(self.server.hub.secret, oid.encode(), hashlib.sha256).hexdigest()[:32]

    def _lfs_batch(self, repo_type: str, repo_id: str, tail: list[str]) -> None:
        storage = self.server.hub.storage
        repo = self._repo(repo_type, repo_id)
        body = self._json()
        self._require_write()
        if tail == ["verify"]:
            if storage.blob_size(body["oid"]) != body["size"]:
                raise HubError(404, f"Object {body['oid']} not found")
            with storage.lock:
                repo["lfs"].append(body["oid"])
            return self._send(200, {"success": True})
        if tail != ["batch"] or body.get("operation") != "upload":
            raise HubError(404, "Only LFS uploads are implemented (downloads use /resolve)")
        verify = f"{self.base}/{URL_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/verify"
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            objects.append({"oid": oid, "size": size, "authenticated": True})
            if oid in repo["lfs"] and storage.blob_size(oid) == size:
                continue  # no "actions": already stored for this repo, the client skips it
            href = f"{self.base}/lfs-upload/{oid}?sig={self._sign(oid)}"
            objects[-1]["actions"] = {"upload": {"href": href}, "verify": {"href": verify}}
        out = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        self._send(200, out, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str) -> None:
        # No Authorization header here (as with a presigned URL): the signature is the credential.
        if not hmac.compare_digest(self.query.get("sig", ""), self._sign(oid)):
            raise HubError(403, "Bad signature")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid")
        self.server.hub.storage.put_blob(self.body)
        self._send(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    # -- downloads
    def _resolve(self, method: str, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        hub = self.server.hub
        repo = self._repo(repo_type, repo_id)
        commit_id = hub.storage.resolve(repo, rev)
        entry = hub.storage.file_entry(repo, commit_id, path)
        sha = entry["sha256"]
        headers = {"X-Repo-Commit": commit_id, "Accept-Ranges": "bytes"}
        headers["ETag"] = f'"{entry["oid"]}"'  # the git blob id, for regular files
        if entry["lfs"]:
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"'})
            headers["X-Linked-Size"] = entry["size"]
            if hub.lfs_redirect:
                # Like the Hub: 302 to a CDN on another origin, where the client sends no token.
                cdn = hub.url.replace("127.0.0.1", "localhost")
                location = f"{cdn}/cdn-lfs/{sha}?filename={quote(path)}&sig={self._sign(sha)}"
                return self._send(302, b"", {**headers, "Location": location})
        self._serve_blob(method, sha, entry["size"], path, headers)

    def _cdn(self, method: str, sha256: str) -> None:
        size = self.server.hub.storage.blob_size(sha256)
        if size is None or not hmac.compare_digest(self.query.get("sig", ""), self._sign(sha256)):
            raise HubError(403, "Request has expired or signature is invalid")
        name = self.query.get("filename", sha256)
        headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
        self._serve_blob(method, sha256, size, name, headers)

    def _serve_blob(self, method: str, sha256: str, size: int, path: str, headers: dict) -> None:
        hub = self.server.hub
        start, end, status = 0, size, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and (match[1] or match[2]):
            if match[1]:  # "bytes=a-b" or "bytes=a-"
                start, end = int(match[1]), min(int(match[2] or size - 1) + 1, size)
            else:  # "bytes=-n": the last n bytes
                start = max(size - int(match[2]), 0)
            if start >= end:
                content_range = {"Content-Range": f"bytes */{size}"}
                raise HubError(416, "Range Not Satisfiable", None, content_range)
            status, headers["Content-Range"] = 206, f"bytes {start}-{end - 1}/{size}"
        fault = hub._take_fault(method, path)
        if fault and fault.kind == "status":
            raise HubError(fault.status, f"Injected error {fault.status}")
        if fault and fault.kind == "hang" and method == "HEAD":
            hub._stopping.wait(fault.seconds)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if method == "HEAD":
            return
        data = hub.storage.read_blob(sha256, start, end)  # test-sized files: in one go
        if fault and fault.kind == "drop":
            self.wfile.write(data[: max(0, fault.after - start)])
            self.close_connection = True
            # EOF before Content-Length bytes: the client sees a truncated body
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault.kind == "hang":
            self.wfile.write(data[: fault.after])
            hub._stopping.wait(fault.seconds)
            data = data[fault.after :]
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not block stop()
    hub: HubServer


class HubServer:
    """The fake Hub, served from a thread. Point HF_ENDPOINT at `url`.

    tokens: None accepts any non-empty Bearer token; a set or a {token: username} dict accepts only
    those (others get 401 "Invalid credentials"). Any accepted token may read and write every repo.
    lfs_redirect: LFS downloads are 302-redirected to a "CDN" on http://localhost:<port>, a second
    origin, as on the Hub; False serves them from /resolve directly.
    """

    def __init__(
        self, root, host="127.0.0.1", port=0, tokens=None, username="user", lfs_redirect=True
    ):
        self.storage = HubStorage(root)
        self.host, self.port, self.tokens, self.username = host, port, tokens, username
        self.lfs_redirect = lfs_redirect and host == "127.0.0.1" and _localhost_is_loopback()
        self.secret = os.urandom(16)
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self._fault_lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HubServer:
        self._stopping.clear()
        self._httpd = _Server((self.host, self.port), HubRequestHandler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]
        # A short poll interval keeps stop() fast.
        serve = self._httpd.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes up "hang" faults
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._conns):  # idle keep-alive connections would otherwise linger
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, method: str, fragment: str = "") -> int:
        """Number of logged requests with this method whose path contains `fragment`."""
        return sum(1 for m, p in self.requests if m == method and fragment in p)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._fault_lock:
            for fault in self.faults:
                if fault.method == method and fault.path in (None, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None


def _localhost_is_loopback() -> bool:
    with contextlib.suppress(OSError):
        infos = socket.getaddrinfo("localhost", None, socket.AF_INET)
        return any(info[4][0] == "127.0.0.1" for info in infos)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Hugging Face Hub on loopback")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", required=True, help="storage folder (kept between runs)")
    parser.add_argument("--token", action="append", help="accepted token (repeatable)")
    parser.add_argument("--no-lfs-redirect", action="store_true", help="no CDN redirect for LFS")
    args = parser.parse_args()
    tokens = set(args.token) if args.token else None
    hub = HubServer(args.root, port=args.port, tokens=tokens, lfs_redirect=not args.no_lfs_redirect)
    hub.start()
    print(f"Fake Hub at {hub.url} (export HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
