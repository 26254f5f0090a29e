"""stml push / pull / hf:// against the loopback Hub server (tests/fakes/hub_server.py), driving the
real huggingface_hub client in `stml` subprocesses (HF_ENDPOINT is read at import time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from stml_deploy.hub_transfer import package_files
from stml_deploy.package import ModelPackage
from tests.conftest import OLD_PACKAGE, ROOT, one_line_error, run_cli
from tests.fakes.hub_server import Fault, HubServer

pytestmark = pytest.mark.slow
TOKEN = "hf_test_token"


@pytest.fixture
def hub(tmp_path: Path):
    server = HubServer(tmp_path / "hub_root").start()
    yield server
    server.stop()


def env_for(hub: HubServer, home: Path, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = {k: "" for k in os.environ if k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        **extra,
    )
    env["HF_TOKEN"] = token or ""
    return env


def python_with_hub(
    hub: HubServer, home: Path, code: str, *argv: str, token: str | None = TOKEN
) -> subprocess.CompletedProcess:
    """`python -c code argv...` in the project folder, pointed at the loopback Hub."""
    env = {**os.environ, **env_for(hub, home, token)}
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def stml(hub: HubServer, home: Path, *args: str, token: str | None = TOKEN, **extra: str):
    return run_cli(*args, env=env_for(hub, home, token, **extra))


def copy_of(package: Path, dest: Path) -> Path:
    shutil.copytree(package, dest, ignore=shutil.ignore_patterns("train_state"))
    return dest


def test_push_pull_round_trip_same_bytes(
    hub: HubServer, exported_package: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    pushed = stml(hub, home, "push", str(exported_package), "user/tiny", "--message", "first")
    assert pushed.code == 0, pushed.err
    assert "a generated model card" in pushed.out
    out = tmp_path / "pulled"
    pulled = stml(hub, home, "pull", "user/tiny", "--out", str(out))
    assert pulled.code == 0, pulled.err
    source = ModelPackage.load(exported_package)
    for rel in package_files(source):
        if rel != "config.json":
            assert (out / rel).read_bytes() == (exported_package / rel).read_bytes(), rel
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert not any(f.startswith(("train_state", "engines")) for f in files)
    config = json.loads((out / "config.json").read_text())
    assert config["hub"]["repo_id"] == "user/tiny" and len(config["hub"]["commit"]) == 40
    card = (out / "README.md").read_text()
    assert (
        "library_name: stml" in card
        and "Parity of the exported models" in card
        and "stml pull user/tiny" in card
    )
    # what the client really called
    for method, fragment in [("POST", "/api/repos/create"), ("POST", "/preupload/"), ("POST", "/commit/"),
                             ("POST", ".git/info/lfs/objects/batch"), ("GET", "/resolve/")]:  # fmt: skip
        assert hub.count(method, fragment) > 0, (method, fragment)


def test_revisions_branches_and_prs(hub: HubServer, exported_package: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    package = copy_of(exported_package, tmp_path / "pkg")
    assert stml(hub, home, "push", str(package), "user/rev").code == 0
    first = stml(hub, home, "pull", "user/rev", "--out", str(tmp_path / "a"))
    first_commit = json.loads((tmp_path / "a" / "config.json").read_text())["hub"]["commit"]
    assert first.code == 0
    # pulling again over an earlier pull keeps the device's engines of the variants it still
    # has (ONNX Runtime's TensorRT cache too), drops others, and refuses foreign files
    sha12 = json.loads((tmp_path / "a" / "config.json").read_text())["artifacts"][
        "onnx/model.onnx"
    ]["sha256"][:12]
    engines = tmp_path / "a" / "engines"
    (engines / "ort-tensorrt" / sha12).mkdir(parents=True)
    (engines / "ort-tensorrt" / "0123456789ab").mkdir()
    for name in (f"{sha12}-sm87-trt10.3.0-fp32-b1_8_32.engine", "0123456789ab-sm87-trt10.3.0-fp32-b1_8_32.engine",
                 "timing-sm87-trt10.3.0.cache", f"ort-tensorrt/{sha12}/cached", "ort-tensorrt/0123456789ab/cached"):  # fmt: skip
        (engines / name).write_bytes(b"plan")
    assert stml(hub, home, "pull", "user/rev", "--out", str(tmp_path / "a")).code == 0
    assert sorted(str(p.relative_to(engines)) for p in engines.rglob("*") if p.is_file()) == [
        f"{sha12}-sm87-trt10.3.0-fp32-b1_8_32.engine",
        f"ort-tensorrt/{sha12}/cached",
        "timing-sm87-trt10.3.0.cache",
    ]
    (tmp_path / "a" / "NOTES.txt").write_text("mine")
    refused = stml(hub, home, "pull", "user/rev", "--out", str(tmp_path / "a"))
    assert "NOTES.txt" in one_line_error(refused)
    assert (tmp_path / "a" / "NOTES.txt").read_text() == "mine"
    edited = ModelPackage.load(package)
    edited.config.name = "renamed"
    edited.save()
    assert stml(hub, home, "push", str(package), "user/rev").code == 0
    old = stml(hub, home, "pull", f"user/rev@{first_commit}", "--out", str(tmp_path / "old"))
    assert old.code == 0, old.err
    assert json.loads((tmp_path / "old" / "config.json").read_text())["name"] != "renamed"
    assert stml(hub, home, "pull", "user/rev", "--out", str(tmp_path / "new")).code == 0
    assert json.loads((tmp_path / "new" / "config.json").read_text())["name"] == "renamed"
    dev = stml(hub, home, "push", str(package), "user/rev", "--revision", "dev")
    assert (
        dev.code == 0
        and stml(hub, home, "pull", "user/rev@dev", "--out", str(tmp_path / "dev")).code == 0
    )
    unchanged = stml(hub, home, "push", str(package), "user/rev")
    assert unchanged.code == 0 and "nothing to push" in unchanged.out
    edited.config.name = "proposed"
    edited.save()
    pr = stml(hub, home, "push", str(package), "user/rev", "--create-pr", "--message", "proposal")
    assert pr.code == 0 and "pull request:" in pr.out
    assert "not exist" in one_line_error(
        stml(hub, home, "pull", "user/rev@no-such-branch", "--out", str(tmp_path / "x"))
    )


def test_cache_and_offline(
    hub: HubServer, exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert stml(hub, home, "push", str(exported_package), "user/cached").code == 0
    online = stml(hub, home, "info", "hf://user/cached", "--json")
    assert online.code == 0, online.err
    assert json.loads(online.out)["name"] == ModelPackage.load(exported_package).name
    (snapshot,) = (home / "hub" / "models--user--cached" / "snapshots").iterdir()
    blob = (snapshot / "onnx" / "model.onnx").resolve()

    def damage() -> None:
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))

    damage()  # online: the damaged file of the cache copy is downloaded again, alone
    large_files = hub.count("GET", "/cdn-lfs/")  # large files come from the LFS store
    assert large_files > 3  # the first download fetched weights, ONNX files, golden set
    repaired = stml(hub, home, "info", "hf://user/cached")
    assert repaired.code == 0 and "downloading onnx/model.onnx again" in repaired.err, repaired.err
    assert hub.count("GET", "/cdn-lfs/") - large_files <= 1  # that file only
    damage()
    stuck = stml(hub, home, "info", "hf://user/cached", HF_HUB_OFFLINE="1")
    assert str(snapshot) in one_line_error(stuck) and "delete that folder" in stuck.err
    assert stml(hub, home, "info", "hf://user/cached").code == 0
    hub.stop()  # no network from here on
    offline = stml(
        hub,
        home,
        "embed",
        "hf://user/cached",
        str(digit_folder),
        "--out",
        str(tmp_path / "e.npy"),
        HF_HUB_OFFLINE="1",
    )
    assert offline.code == 0, offline.err
    assert (tmp_path / "e.npy").is_file()
    missing = stml(hub, home, "info", "hf://user/never-pulled", HF_HUB_OFFLINE="1")
    assert "not in the local Hub cache" in one_line_error(missing)


def test_python_api_from_pretrained(
    hub: HubServer, exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert stml(hub, home, "push", str(exported_package), "user/api", "--private").code == 0
    script = (
        "import sys, json; from stml_deploy import Embedder, Index; "
        "e = Embedder.from_pretrained('user/api', backend='onnx', precision='int8', token=sys.argv[1] or None); "
        f"r = e.embed_paths(sorted(__import__('pathlib').Path('{digit_folder}').rglob('*.png'))[:5], show_progress=False); "
        "print(json.dumps(list(r.vectors.shape)))"
    )
    # a private repo, no HF_TOKEN in the environment: the token given to from_pretrained counts
    proc = python_with_hub(hub, home, script, TOKEN, token=None)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [5, 16]
    hidden = python_with_hub(hub, tmp_path / "home2", script, "", token=None)
    assert hidden.returncode != 0 and "repository not found" in hidden.stderr


def test_tampered_dropped_and_missing(
    hub: HubServer, exported_package: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert stml(hub, home, "push", str(exported_package), "user/t").code == 0
    hub.storage.tamper("model", "user/t", "onnx/model.int8.onnx")
    tampered = stml(hub, home, "pull", "user/t", "--out", str(tmp_path / "t"))
    assert "sha256 mismatch" in one_line_error(tampered) and "model.int8.onnx" in tampered.err
    assert not (tmp_path / "t").exists()  # no half package
    assert stml(hub, home, "push", str(exported_package), "user/d").code == 0
    hub.faults.append(Fault("drop", path="model.safetensors", after=1000, times=None))
    dropped = stml(hub, tmp_path / "home2", "pull", "user/d", "--out", str(tmp_path / "d"))
    assert "transfer failed" in one_line_error(dropped)
    assert not (tmp_path / "d").exists()
    hub.faults.clear()
    assert "repository not found" in one_line_error(
        stml(hub, home, "pull", "user/nothing-here", "--out", str(tmp_path / "n"))
    )


def test_bad_names_tokens_and_packages(
    hub: HubServer, exported_package: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert "not authorized" in one_line_error(
        stml(hub, home, "push", str(exported_package), "user/x", token=None)
    )
    for bad in ("no-slash", "a/b/c", "user/bad..name", "user/-bad"):
        assert "invalid repo id" in one_line_error(stml(hub, home, "pull", bad)), bad
    broken = copy_of(exported_package, tmp_path / "broken")
    (broken / "onnx" / "model.onnx").write_bytes(b"changed after export")
    requests_before = len(hub.requests)
    refused = stml(hub, home, "push", str(broken), "user/broken")
    assert (
        "sha256 mismatch" in one_line_error(refused) and len(hub.requests) == requests_before
    )  # refused before any upload
    assert stml(hub, home, "push", str(exported_package), "user/evil").code == 0
    repo = hub.storage.get_repo("model", "user/evil", authorized=True)
    hub.storage.commit(repo, "main", [("file", "../escape.txt", b"outside")], "evil", "", "user")
    evil = stml(hub, home, "pull", "user/evil", "--out", str(tmp_path / "evil"))
    assert "leave the package folder" in one_line_error(evil)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "evil").exists()


def test_user_readme_is_kept_unless_replaced(
    hub: HubServer, exported_package: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    package = copy_of(exported_package, tmp_path / "pkg")
    (package / "README.md").write_text("# My own card\n")
    kept = stml(hub, home, "push", str(package), "user/readme")
    assert kept.code == 0 and "your README.md" in kept.out
    assert stml(hub, home, "pull", "user/readme", "--out", str(tmp_path / "a")).code == 0
    assert (tmp_path / "a" / "README.md").read_text() == "# My own card\n"
    assert stml(hub, home, "push", str(package), "user/readme", "--replace-readme").code == 0
    assert stml(hub, home, "pull", "user/readme", "--out", str(tmp_path / "b")).code == 0
    assert "library_name: stml" in (tmp_path / "b" / "README.md").read_text()


def test_training_from_the_hub(hub: HubServer, exported_package: Path, tmp_path: Path) -> None:
    """--init-from hf://... continues from a published package; --backbone hf-hub:... takes
    pretrained backbone weights through timm's own Hub loader."""
    from safetensors import safe_open

    home = tmp_path / "home"
    assert stml(hub, home, "push", str(exported_package), "user/start").code == 0
    out = tmp_path / "continued"
    result = stml(hub, home, "train", "digits", "--max-images", "80", "--out", str(out), "--epochs", "1", "--init-from", "hf://user/start",
                  "--lr", "1e-12", "--head-lr", "1e-12", "--batch-size", "40", "--neighbours", "4", "--workers", "0")  # fmt: skip
    assert result.code == 0, result.err
    with (
        safe_open(str(exported_package / "model.safetensors"), "pt") as a,
        safe_open(str(out / "model.safetensors"), "pt") as b,
    ):
        assert (a.get_tensor("f.weight") - b.get_tensor("f.weight")).abs().max() < 1e-6
    assert (
        json.loads((out / "config.json").read_text())["training"]["init_from"] == "hf://user/start"
    )

    push_timm = (
        "import timm, torch; torch.manual_seed(3); m = timm.create_model('test_resnet', pretrained=False); "
        "timm.models.push_to_hf_hub(m, 'user/test-resnet-weights')"
    )
    proc = python_with_hub(hub, home, push_timm)
    assert proc.returncode == 0, proc.stderr
    hub_backbone = tmp_path / "hub_backbone"
    args = ["train", "digits", "--max-images", "80", "--out", str(hub_backbone), "--epochs", "1", "--backbone", "hf-hub:user/test-resnet-weights",
            "--pretrained", "--lr", "1e-12", "--head-lr", "1e-12", "--image-size", "32", "--resize", "32", "--batch-size", "40", "--neighbours", "4", "--workers", "0"]  # fmt: skip
    trained = stml(hub, home, *args)
    assert trained.code == 0, trained.err
    import timm
    import torch

    torch.manual_seed(3)
    expected = timm.create_model("test_resnet", pretrained=False).state_dict()["conv1.0.weight"]
    with safe_open(str(hub_backbone / "model.safetensors"), "pt") as fh:
        got = fh.get_tensor("backbone.net.conv1.0.weight")
    assert (got - expected).abs().max() < 1e-6
    # config.json names the timm architecture: eval rebuilds it with no Hub and an empty cache
    assert (
        json.loads((hub_backbone / "config.json").read_text())["architecture"]["timm_architecture"]
        == "test_resnet"
    )
    hub.stop()
    offline = stml(hub, tmp_path / "empty_home", "eval", str(hub_backbone), "digits", "--max-images",
                   "60", "--json", "--workers", "0", HF_HUB_OFFLINE="1")  # fmt: skip
    assert offline.code == 0, offline.err


def test_pull_and_hf_refs_without_torch(
    hub: HubServer, exported_package: Path, digit_folder: Path, tmp_path: Path
) -> None:

    from tests.test_torch_free import BLOCK_TORCH

    home = tmp_path / "home"
    assert stml(hub, home, "push", str(exported_package), "user/edge").code == 0
    for args in (
        ["pull", "user/edge", "--out", str(tmp_path / "edge")],
        ["index", "build", "hf://user/edge", str(digit_folder), "--out", str(tmp_path / "idx")],
    ):
        proc = python_with_hub(hub, home, BLOCK_TORCH, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    assert ModelPackage.load(tmp_path / "edge").config.hub.repo_id == "user/edge"


def test_published_config_names_no_local_paths() -> None:
    from stml_deploy.config import DataRecord, HubOrigin, MetricsRecord, PackageConfig
    from stml_deploy.package import ModelPackage

    def folder_data(path: str) -> DataRecord:
        return DataRecord.from_json(
            {"name": f"folder {path}", "root": path, "kind": "folder", "images": 3,
             "ref": {"data": path, "data_root": "/home/me/data", "split": "test"}}
        )  # fmt: skip

    old = ModelPackage.load(OLD_PACKAGE, verify=False)
    config = PackageConfig.from_json(old.config.to_json(), "config.json")
    config.training.data = folder_data("/home/me/secret/products")
    config.metrics["test"] = MetricsRecord(
        {"recall_at_1": 0.5}, folder_data("/home/me/secret/held_out")
    )
    config.hub = HubOrigin("user/x", "main", "0" * 40)
    published = config.dumps(published=True)
    assert "/home/me" not in published and '"hub"' not in published
    assert json.loads(published)["metrics"]["test"]["data"]["root"] == "held_out"
    assert json.loads(published)["training"]["data"]["name"] == "folder products"
    assert config.metrics["test"].data.root == "/home/me/secret/held_out"  # a copy


def test_python_api_push_to_hub_and_from_pretrained(
    hub: HubServer, exported_package: Path, tmp_path: Path
) -> None:
    """The library API a user scripts with: ModelPackage.push_to_hub, .from_pretrained and
    Embedder.from_pretrained against the loopback Hub, with the real client."""
    script = (
        "import sys, json\n"
        "from stml_deploy import Embedder, ModelPackage\n"
        "result = ModelPackage.load(sys.argv[1]).push_to_hub('user/api', commit_message='via api')\n"
        "pulled = ModelPackage.from_pretrained('user/api')\n"
        "with Embedder.from_pretrained('user/api', backend='onnx', precision='fp32') as e:\n"
        "    vectors = e.embed_paths([sys.argv[2]]).vectors\n"
        "print(json.dumps({'files': result.files, 'commit': result.commit_url,\n"
        "                  'sha': pulled.weights_sha256, 'dim': vectors.shape[1]}))\n"
    )
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    proc = python_with_hub(hub, tmp_path / "home", script, str(exported_package), str(image))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    local = ModelPackage.load(exported_package)
    assert out["sha"] == local.weights_sha256 and out["dim"] == local.embedding_dim
    assert "model.safetensors" in out["files"] and "onnx/model.onnx" in out["files"]
