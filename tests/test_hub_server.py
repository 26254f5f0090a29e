"""Drive the REAL huggingface_hub client, in a subprocess, against the fake Hub of hub_server.py.

The client reads HF_ENDPOINT & co. when it is imported, hence a fresh interpreter per scenario.
"""

import base64
import hashlib
import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from textwrap import dedent

import pytest

from tests.fakes.hub_server import Fault, HubServer

TOKEN = "hf_test_token"
MiB = 1024 * 1024

# Prepended to every client script: helpers, and OUT, a dict printed as JSON at the end.
PRELUDE = dedent(
    """
    import hashlib, json, os, sys
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    api = HfApi()
    OUT = {}

    def error_of(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as e:
            response = getattr(e, "response", None)
            return {"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                    "status": getattr(response, "status_code", None), "msg": str(e)}
        return None

    def put(data, path, repo="user/demo", **kwargs):
        return api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=repo, **kwargs)

    def read(*args, **kwargs):
        return open(hf_hub_download(*args, **kwargs)).read()

    def sha(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    def tree(path):  # {relative posix path: sha256} of every file under a folder
        files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        return {os.path.relpath(f, path).replace(os.sep, "/"): sha(f) for f in files}
    """
)


@pytest.fixture
def hub(tmp_path):
    server = HubServer(tmp_path / "hub_root").start()
    yield server
    server.stop()


def run_client(url: str, home: Path, script: str, *args, token: str | None = TOKEN, **env) -> dict:
    """Run `script` with the real client against `url`, with HF_HOME=home; return its OUT dict."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    full_env.update(HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), **env)
    full_env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if token:
        full_env["HF_TOKEN"] = token
    code = PRELUDE + dedent(script) + "\nprint('RESULT ' + json.dumps(OUT))\n"
    # cwd outside the project: with `-c`, sys.path[0] is the cwd, which must shadow nothing.
    cmd = [sys.executable, "-c", code, *map(str, args)]
    proc = subprocess.run(
        cmd, env=full_env, capture_output=True, text=True, timeout=60, cwd=home.parent
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stderr[-4000:]}"
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(results[-1][len("RESULT ") :])


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_folder_then_snapshot_roundtrip(hub, tmp_path):
    files = {
        "README.md": b"# demo\n",
        "model.safetensors": os.urandom(50_000),
        "nested/deep/config.json": b'{"a": 1}',
    }
    src = make_folder(tmp_path / "src", files)
    out = run_client(
        hub.url,
        tmp_path / "home",
        """
        api.create_repo("user/demo", exist_ok=True)
        api.create_repo("user/demo", exist_ok=True)  # a 409, swallowed by exist_ok
        ci = api.upload_folder(folder_path=sys.argv[1], repo_id="user/demo")
        info = api.model_info("user/demo", files_metadata=True)
        path = snapshot_download("user/demo")
        OUT.update(oid=ci.oid, url=ci.commit_url, sha=info.sha, snapshot=path, files=tree(path))
        OUT["lfs"] = {s.rfilename: s.lfs.sha256 if s.lfs else None for s in info.siblings}
        api.create_repo("user/ds", repo_type="dataset")
        put(b"a,b\\n1,2\\n", "data/train.csv", repo="user/ds", repo_type="dataset")
        OUT["dataset"] = read("user/ds", "data/train.csv", repo_type="dataset")
        """,
        src,
    )
    sha = out["sha"]
    assert out["oid"] == sha and len(sha) == 40
    assert out["url"] == f"{hub.url}/user/demo/commit/{sha}"
    assert Path(out["snapshot"]).name == sha
    assert out["files"].pop(".gitattributes")  # from the Hub's "initial commit"
    assert out["files"] == {k: sha256(v) for k, v in files.items()}
    weights = sha256(files["model.safetensors"])
    no_lfs = dict.fromkeys([".gitattributes", "README.md", "nested/deep/config.json"])
    assert out["lfs"] == {**no_lfs, "model.safetensors": weights}
    assert out["dataset"] == "a,b\n1,2\n"
    # The legacy (non-xet) upload protocol, then the download protocol, were really used.
    assert hub.count("POST", "/api/repos/create") == 3
    assert hub.count("POST", "/api/models/user/demo/preupload/main") == 1
    assert hub.count("POST", "/user/demo.git/info/lfs/objects/batch") == 1
    assert hub.count("PUT", f"/lfs-upload/{weights}") == 1
    assert hub.count("POST", "/user/demo.git/info/lfs/objects/verify") == 1
    assert hub.count("POST", "/api/models/user/demo/commit/main") == 1
    assert hub.count("GET", f"/api/models/user/demo/tree/{sha}") == 1
    assert hub.count("HEAD", f"/user/demo/resolve/{sha}/") == 4
    assert hub.count("GET", f"/user/demo/resolve/{sha}/") == 3
    assert hub.count("GET", f"/cdn-lfs/{weights}") == 1
    assert hub.count("GET", "/datasets/user/ds/resolve/main/data/train.csv") == 1
    # As with the Hub, the token is not sent to the "CDN" (another origin) the LFS files live on.
    cdn = [r for r in hub.requests if r[1].startswith("/cdn-lfs/")]
    assert cdn and all("authorization" not in r.headers for r in cdn)
    assert all("authorization" in r.headers for r in hub.requests if "/resolve/" in r[1])


def test_older_commit_stays_downloadable_after_new_push(hub, tmp_path):
    script = """
        api.create_repo("user/demo")
        c1 = put(b"weights-v1", "weights.bin")
        put(b"notes-v1", "notes.txt")
        c2 = put(b"weights-v2", "weights.bin")
        # Unchanged content: preupload's "oid" makes the client skip the commit.
        OUT["noop_commit"] = put(b"notes-v1", "notes.txt").oid
        OUT["c1"], OUT["c2"] = c1.oid, c2.oid
        OUT["old"] = read("user/demo", "weights.bin", revision=c1.oid)
        OUT["new"] = read("user/demo", "weights.bin")
        OUT["missing_at_c1"] = error_of(hf_hub_download, "user/demo", "notes.txt", revision=c1.oid)
        OUT["commits"] = [c.commit_id for c in api.list_repo_commits("user/demo")]
        OUT["titles"] = [c.title for c in api.list_repo_commits("user/demo")]
    """
    out = run_client(hub.url, tmp_path / "home", script)
    assert (out["old"], out["new"]) == ("weights-v1", "weights-v2")
    assert out["missing_at_c1"]["type"] == "RemoteEntryNotFoundError"
    assert out["noop_commit"] == out["c2"]
    assert len(out["commits"]) == 4 and out["commits"][0] == out["c2"]
    assert out["commits"][2] == out["c1"] and out["titles"][-1] == "initial commit"
    assert hub.count("POST", "/commit/main") == 3  # the 4th upload never reached /commit
    assert hub.count("HEAD", f"/user/demo/resolve/{out['c1']}/weights.bin") == 1


def test_tag_and_branch_downloads(hub, tmp_path):
    script = """
        api.create_repo("user/demo")
        c1 = put(b"A", "w.bin")
        api.create_tag("user/demo", tag="v1.0")
        OUT["tag_again"] = error_of(api.create_tag, "user/demo", tag="v1.0")
        api.create_tag("user/demo", tag="v1.0", exist_ok=True)
        api.create_branch("user/demo", branch="dev", revision=c1.oid)
        c2 = put(b"B", "w.bin")
        c3 = put(b"C", "w.bin", revision="dev")
        OUT["unknown_branch"] = error_of(put, b"D", "w.bin", revision="nope")
        OUT["c"] = [c1.oid, c2.oid, c3.oid]
        revs = ("v1.0", "dev", "main", c1.oid)
        OUT["got"] = {rev: read("user/demo", "w.bin", revision=rev) for rev in revs}
        snap = snapshot_download("user/demo", revision="v1.0")
        OUT["snap"] = open(os.path.join(snap, "w.bin")).read()
        refs = api.list_repo_refs("user/demo")
        OUT["branches"] = {r.name: r.target_commit for r in refs.branches}
        OUT["tags"] = {r.name: r.target_commit for r in refs.tags}
        OUT["info_sha"] = api.model_info("user/demo", revision="v1.0").sha
    """
    out = run_client(hub.url, tmp_path / "home", script)
    c1, c2, c3 = out["c"]
    assert out["got"] == {"v1.0": "A", "dev": "C", "main": "B", c1: "A"}
    assert out["snap"] == "A" and out["info_sha"] == c1
    assert out["branches"] == {"main": c2, "dev": c3} and out["tags"] == {"v1.0": c1}
    assert out["tag_again"]["status"] == 409
    assert out["unknown_branch"]["type"] == "RevisionNotFoundError"
    assert (tmp_path / "home/hub/models--user--demo/refs/v1.0").read_text() == c1
    assert hub.storage.repos["model:user/demo"]["commits"][c3]["parents"] == [c1]


def test_create_pr_and_parent_commit(hub, tmp_path):
    script = """
        from huggingface_hub import CommitOperationAdd
        api.create_repo("user/demo")
        c1 = put(b"main", "a.txt")
        pr = put(b"proposal", "b.txt", create_pr=True)
        OUT.update(c1=c1.oid, pr_oid=pr.oid, pr_url=pr.pr_url, pr_rev=pr.pr_revision)
        OUT["pr_num"] = pr.pr_num
        OUT["main_sha"] = api.model_info("user/demo").sha
        OUT["b_on_main"] = error_of(hf_hub_download, "user/demo", "b.txt")
        OUT["b_on_pr"] = read("user/demo", "b.txt", revision=pr.pr_revision)
        refs = api.list_repo_refs("user/demo", include_pull_requests=True)
        OUT["prs"] = {r.ref: r.target_commit for r in refs.pull_requests}
        ops = lambda: [CommitOperationAdd(path_in_repo="c.txt", path_or_fileobj=b"c")]
        first = api.list_repo_commits("user/demo")[-1].commit_id
        def commit(parent):
            return api.create_commit("user/demo", ops(), commit_message="x", parent_commit=parent)
        OUT["stale_parent"] = error_of(commit, first)
        OUT["good_parent"] = commit(c1.oid).oid
    """
    out = run_client(hub.url, tmp_path / "home", script)
    commits = hub.storage.repos["model:user/demo"]["commits"]
    assert out["pr_url"] == f"{hub.url}/user/demo/discussions/1"
    assert out["pr_rev"] == "refs/pr/1" and out["pr_num"] == 1
    assert out["main_sha"] == out["c1"]  # a PR never moves main
    assert out["b_on_main"]["type"] == "RemoteEntryNotFoundError"
    assert out["b_on_pr"] == "proposal"
    assert out["prs"] == {"refs/pr/1": out["pr_oid"]}
    assert commits[out["pr_oid"]]["parents"] == [out["c1"]]
    assert out["stale_parent"]["status"] == 412
    assert hub.storage.repos["model:user/demo"]["heads"]["main"] == out["good_parent"]
    queries = [r.query for r in hub.requests if r[1].endswith("/commit/main")]
    assert queries == ["", "create_pr=1", "", ""]


def test_offline_mode_serves_from_cache_after_server_stopped(hub, tmp_path):
    home = tmp_path / "home"
    blob = os.urandom(20_000)
    make_folder(tmp_path / "src", {"model.safetensors": blob, "config.json": b"{}"})
    script = """
        api.create_repo("user/demo")
        api.upload_folder(folder_path=sys.argv[1], repo_id="user/demo")
        OUT["files"] = tree(snapshot_download("user/demo"))
    """
    online = run_client(hub.url, home, script, tmp_path / "src")
    hub.stop()
    script = """
        OUT["files"] = tree(snapshot_download("user/demo"))
        OUT["one"] = sha(hf_hub_download("user/demo", "model.safetensors"))
        # Only offline: online but unreachable, a cache miss costs ~23 s of client retries.
        if os.environ.get("HF_HUB_OFFLINE"):
            OUT["not_cached"] = error_of(hf_hub_download, "user/demo", "other.txt")
    """
    offline = run_client(hub.url, home, script, HF_HUB_OFFLINE="1")
    assert offline["files"] == online["files"] and offline["one"] == sha256(blob)
    assert offline["not_cached"]["type"] == "LocalEntryNotFoundError"
    # Without HF_HUB_OFFLINE, a refused connection also falls back to the cache.
    unreachable = run_client(hub.url, home, script)
    assert unreachable["files"] == online["files"] and unreachable["one"] == sha256(blob)


def test_writes_without_token_get_401(hub, tmp_path):
    run_client(hub.url, tmp_path / "home", 'api.create_repo("user/demo")')
    n = len(hub.requests)
    script = """
        OUT["upload"] = error_of(put, b"x", "x.txt")
        OUT["create"] = error_of(api.create_repo, "user/other")
        OUT["branch"] = error_of(api.create_branch, "user/demo", branch="dev")
        OUT["read"] = api.model_info("user/demo").sha  # a public repo: no token needed
    """
    out = run_client(hub.url, tmp_path / "home", script, token=None)
    for key in ("upload", "create", "branch"):
        assert out[key]["status"] == 401, out[key]
        # Over https, the client would turn a 401 on /api/models/... into RepositoryNotFoundError.
        assert out[key]["type"] == "HfHubHTTPError"
    assert "Invalid username or password." in out["upload"]["msg"]
    assert hub.count("POST", "/commit/") == 0
    assert len(hub.storage.repos["model:user/demo"]["commits"]) == 1
    assert hub.requests[n:] and not any("authorization" in r.headers for r in hub.requests[n:])


def test_fixed_token_set_and_private_repos(tmp_path):
    with HubServer(tmp_path / "root", tokens={"hf_alice": "alice"}) as hub:
        script = """
            OUT["whoami"] = api.whoami()["name"]
            url = api.create_repo("secret", private=True)  # no namespace: the token's user
            OUT["repo_id"] = url.repo_id
            put(b"s3cr3t", "key.txt", repo=url.repo_id)
            OUT["private"] = api.model_info(url.repo_id).private
        """
        out = run_client(hub.url, tmp_path / "home", script, token="hf_alice")
        script = """
            OUT["info"] = error_of(api.model_info, "alice/secret")
            OUT["file"] = error_of(hf_hub_download, "alice/secret", "key.txt")
            OUT["bad_token"] = error_of(api.model_info, "alice/secret", token="hf_mallory")
        """
        anon = run_client(hub.url, tmp_path / "home2", script, token=None)
    assert out == {"whoami": "alice", "repo_id": "alice/secret", "private": True}
    assert anon["info"]["type"] == anon["file"]["type"] == "RepositoryNotFoundError"
    assert anon["info"]["status"] == 404
    assert anon["bad_token"]["status"] == 401
    assert "Invalid credentials" in anon["bad_token"]["msg"]


def test_error_mapping(hub, tmp_path):
    home = tmp_path / "home"
    script = """
        api.create_repo("user/demo")
        OUT["sha"] = put(b"a", "a.txt").oid
        OUT["repo_info"] = error_of(api.model_info, "user/nope")
        OUT["repo_dl"] = error_of(hf_hub_download, "user/nope", "a.txt")
        OUT["rev_info"] = error_of(api.model_info, "user/demo", revision="nope")
        OUT["rev_dl"] = error_of(hf_hub_download, "user/demo", "a.txt", revision="nope")
        OUT["rev_snap"] = error_of(snapshot_download, "user/demo", revision="nope")
        OUT["entry_dl"] = error_of(hf_hub_download, "user/demo", "missing.txt")
        OUT["bad_id"] = error_of(hf_hub_download, "bad--id", "a.txt")
    """
    out = run_client(hub.url, home, script)
    assert out["repo_info"]["type"] == out["repo_dl"]["type"] == "RepositoryNotFoundError"
    assert out["rev_info"]["type"] == out["rev_dl"]["type"] == "RevisionNotFoundError"
    assert out["rev_snap"]["type"] == "RevisionNotFoundError"
    assert out["entry_dl"]["type"] == "RemoteEntryNotFoundError"
    assert "EntryNotFoundError" in out["entry_dl"]["mro"]
    assert out["bad_id"]["type"] == "HFValidationError"  # rejected client-side, never sent
    assert hub.count("HEAD", "bad--id") == 0
    # The X-Repo-Commit of the 404 lets the client cache the absence of the file.
    assert (home / f"hub/models--user--demo/.no_exist/{out['sha']}/missing.txt").exists()
    # The server answers 400 to an invalid repo id; error headers carry the codes the client maps.
    cases = [
        ("/api/models/bad--id", 400, None),
        ("/api/models/user/nope", 404, "RepoNotFound"),
        ("/user/demo/resolve/nope/a.txt", 404, "RevisionNotFound"),
        ("/user/demo/resolve/main/zz.txt", 404, "EntryNotFound"),
    ]
    for path, status, code in cases:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(hub.url + path)
        assert exc.value.code == status and exc.value.headers.get("X-Error-Code") == code
        assert "error" in json.loads(exc.value.read())


def test_preupload_decides_lfs_like_the_hub(hub):
    def post(path, body, token=TOKEN):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(hub.url + path, json.dumps(body).encode(), headers)
        return json.loads(urllib.request.urlopen(req).read())

    post("/api/repos/create", {"name": "demo", "organization": "user", "type": "model"})
    cases = {  # path: (first bytes, size, expected mode)
        "a.txt": (b"hello", 5, "regular"),
        "big.txt": (b"text", 11 * MiB, "lfs"),
        "w.onnx": (b"text", 10, "lfs"),
        "blob.dat": (b"\x00\x01", 2, "lfs"),
        "saved_model/v/x.idx": (b"t", 1, "lfs"),
        "logs/ev.tfevents.1": (b"t", 1, "lfs"),
        "sub/m.npz": (b"t", 1, "lfs"),
    }
    files = [
        {"path": path, "sample": base64.b64encode(sample).decode(), "size": size}
        for path, (sample, size, _) in cases.items()
    ]
    answer = post("/api/models/user/demo/preupload/main", {"files": files})
    assert {f["path"]: f["uploadMode"] for f in answer["files"]} == {
        path: mode for path, (_, _, mode) in cases.items()
    }
    with pytest.raises(urllib.error.HTTPError) as exc:
        post("/api/models/user/demo/preupload/main", {"files": files}, token=None)
    assert exc.value.code == 401


def test_faults_and_ranges_seen_by_a_plain_http_client(hub):
    # Seeded through the storage API: no client needed.
    hub.storage.create_repo("model", "user/demo", private=False, author="user")
    repo = hub.storage.repos["model:user/demo"]
    ops = [("file", "config.json", b'{"hidden_size": 8}')]
    hub.storage.commit(repo, "main", ops, "add config", "", "user")
    url = hub.url + "/user/demo/resolve/main/config.json"
    hub.faults.append(Fault("status", path="config.json", status=503))
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url)
    assert exc.value.code == 503 and not hub.faults  # times=1: used up
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=2-7"})) as r:
        assert r.status == 206 and r.read() == b"hidden"
        assert r.headers["Content-Range"] == "bytes 2-7/18"
        assert r.headers["X-Repo-Commit"] == repo["heads"]["main"]
    hub.faults.append(Fault("drop", after=5))  # path=None: any file
    with pytest.raises(http.client.IncompleteRead) as exc:
        urllib.request.urlopen(url).read()
    assert exc.value.partial == b'{"hid'


def _upload_weights(hub, tmp_path, blob: bytes) -> None:
    make_folder(tmp_path / "src", {"model.safetensors": blob, "config.json": b'{"x": 1}'})
    script = """
        api.create_repo("user/demo")
        api.upload_folder(folder_path=sys.argv[1], repo_id="user/demo")
    """
    run_client(hub.url, tmp_path / "uploader", script, tmp_path / "src")


def _cdn_ranges(hub, since: int = 0) -> list:
    """The Range header of each GET that reached the fake CDN (None: the whole file)."""
    gets = [r for r in hub.requests[since:] if r[0] == "GET" and r[1].startswith("/cdn-lfs/")]
    return [r.headers.get("range") for r in gets]


def test_connection_dropped_once_is_retried(hub, tmp_path):
    small, big = os.urandom(200_000), os.urandom(12 * MiB)
    make_folder(tmp_path / "src", {"small.safetensors": small, "big.safetensors": big})
    script = """
        api.create_repo("user/demo")
        api.upload_folder(folder_path=sys.argv[1], repo_id="user/demo")
    """
    run_client(hub.url, tmp_path / "up", script, tmp_path / "src")
    hub.faults.append(Fault("drop", path="small.safetensors", after=50_000))
    hub.faults.append(Fault("drop", path="big.safetensors", after=11 * MiB))
    n = len(hub.requests)
    script = """
        OUT["small"] = sha(hf_hub_download("user/demo", "small.safetensors"))
        OUT["big"] = sha(hf_hub_download("user/demo", "big.safetensors"))
    """
    out = run_client(hub.url, tmp_path / "home", script)
    assert (out["small"], out["big"]) == (sha256(small), sha256(big)) and not hub.faults
    # The client writes in 10 MiB chunks: the 50 000 bytes received were still buffered, so they
    # were lost and the retry starts at 0; the big file resumes after its first 10 MiB.
    assert _cdn_ranges(hub, n) == [None, None, None, f"bytes={10 * MiB}-"]


def test_connection_always_dropped_fails_cleanly(hub, tmp_path):
    blob = os.urandom(100_000)
    _upload_weights(hub, tmp_path, blob)
    hub.faults.append(Fault("drop", path="model.safetensors", after=30_000, times=None))
    home = tmp_path / "home"
    script = """
        OUT["error"] = error_of(snapshot_download, "user/demo")
        OUT["left"] = sorted(tree(os.path.join(os.environ["HF_HOME"], "hub", "models--user--demo")))
    """
    out = run_client(hub.url, home, script)
    # The raw httpx2 error, after 5 retries 1 s apart, each from byte 0 (nothing reached the disk).
    assert out["error"]["type"] == "RemoteProtocolError", out["error"]
    assert _cdn_ranges(hub) == [None] * 6
    sha = hub.storage.repos["model:user/demo"]["heads"]["main"]
    left = out["left"]
    assert not any(p.endswith(".incomplete") for p in left)  # partial bytes are deleted
    assert f"blobs/{sha256(blob)}" not in left and f"snapshots/{sha}/model.safetensors" not in left
    kept = {f"snapshots/{sha}/config.json", f"snapshots/{sha}/.gitattributes", f"trees/{sha}.json"}
    assert kept | {"refs/main"} <= set(left)
    # Thanks to the cached tree listing, offline mode refuses the incomplete snapshot.
    script = 'OUT["e"] = error_of(snapshot_download, "user/demo")'
    offline = run_client(hub.url, home, script, HF_HUB_OFFLINE="1")
    assert offline["e"]["type"] == "IncompleteSnapshotError"
    hub.faults.clear()
    n = len(hub.requests)
    script = 'OUT["sha"] = sha(os.path.join(snapshot_download("user/demo"), "model.safetensors"))'
    assert run_client(hub.url, home, script)["sha"] == sha256(blob)
    assert _cdn_ranges(hub, n) == [None]  # a new process starts again from byte 0


def test_hang_longer_than_read_timeout_is_retried(hub, tmp_path):
    blob = os.urandom(100_000)
    _upload_weights(hub, tmp_path, blob)
    hub.faults.append(Fault("hang", path="model.safetensors", after=10_000, seconds=4))
    script = 'OUT["sha"] = sha(hf_hub_download("user/demo", "model.safetensors"))'
    out = run_client(hub.url, tmp_path / "home", script, HF_HUB_DOWNLOAD_TIMEOUT="1")
    assert out["sha"] == sha256(blob)
    assert _cdn_ranges(hub) == [None, None]  # a read timeout after 1 s, then a full retry


def test_tampered_blob_is_served_and_only_the_caller_can_tell(hub, tmp_path):
    blob = os.urandom(40_000)
    _upload_weights(hub, tmp_path, blob)
    assert hub.storage.tamper("model", "user/demo", "model.safetensors") == sha256(blob)
    script = """
        path = hf_hub_download("user/demo", "model.safetensors")
        etag = os.path.basename(os.path.realpath(path))
        OUT.update(sha=sha(path), etag=etag, size=os.path.getsize(path))
    """
    out = run_client(hub.url, tmp_path / "home", script)
    # The cache names the blob after the advertised sha256, with the right size...
    assert out["etag"] == sha256(blob) and out["size"] == len(blob)
    # ...but the bytes differ: the client did not check them.
    assert out["sha"] != out["etag"]
