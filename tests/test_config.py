"""config.json's one reader: every field checked on load, a bad one reported as one line that
names the file and the field; the one writer round-trips what it reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OLD_PACKAGE, one_line_error, run_cli


def _edited(tmp_path: Path, edit: Any) -> Path:
    out = tmp_path / "pkg"
    shutil.copytree(OLD_PACKAGE, out)
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config))
    return out


def _set(path: str, value: Any) -> Any:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return edit


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("format_version", "1", "field format_version must be an integer"),
        ("format_version", 99, "package format 99 is newer than this stml understands"),
        ("preprocessing.image_size", "32", "field preprocessing.image_size must be an integer"),
        ("preprocessing", _DELETE, "field preprocessing is missing"),
        ("preprocessing.mean", None, "field preprocessing.mean must be a list of 3 numbers"),
        ("preprocessing.std", [0.5, 0.5], "field preprocessing.std must be a list of 3 numbers"),
        ("preprocessing.resize", 16, "preprocessing needs resize >= image_size"),
        ("architecture.embedding_dim", -1, "field architecture.embedding_dim must be a positive"),
        ("architecture", [], "architecture must be an object"),
        ("training.epochs_done", "1", "field training.epochs_done must be an integer"),
        ("artifacts.model.safetensors", {"bytes": 1}, "field artifacts.model.safetensors.sha256"),
        ("artifacts.model.safetensors.sha256", "abc", "must be a sha256 hex digest"),
        ("metrics.test.recall_at_1", "high", "field metrics.test.recall_at_1 must be a number"),
        ("hub", {"repo_id": 3}, "field hub.repo_id must be a string"),
    ],
)
def test_a_bad_field_is_one_line_naming_file_and_field(
    tmp_path: Path, path: str, value: Any, expected: str
) -> None:
    if path.startswith("artifacts.model.safetensors"):
        # the artifact name holds a dot: edit it by hand
        def edit(config: dict[str, Any]) -> None:
            entry = config["artifacts"]["model.safetensors"]
            if path.endswith(".sha256"):
                entry["sha256"] = value
            else:
                config["artifacts"]["model.safetensors"] = value

        package = _edited(tmp_path, edit)
    else:
        package = _edited(tmp_path, _set(path, value))
    line = one_line_error(run_cli("info", str(package)))
    assert "config.json" in line and expected in line, line


def test_not_json_and_not_an_object(tmp_path: Path) -> None:
    package = _edited(tmp_path, lambda c: None)
    (package / "config.json").write_text("[1, 2]")
    assert "the file must be an object" in one_line_error(run_cli("info", str(package)))
    (package / "config.json").write_bytes(b"\xff\xfe{")
    assert "not UTF-8" in one_line_error(run_cli("info", str(package)))


def test_reader_and_writer_round_trip_unknown_artifact_details() -> None:
    from stml_deploy.config import PackageConfig

    data = json.loads((OLD_PACKAGE / "config.json").read_text())
    data["artifacts"]["onnx/model.onnx"]["made_by"] = "a later stml"
    data["training"]["data"]["new_field"] = [1, 2]
    again = PackageConfig.from_json(data, "config.json").to_json()
    assert again == data
