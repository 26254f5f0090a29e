"""Reading a package's parity/ folder: the golden set (golden.npz: real and random uint8
inputs with their torch fp32 embeddings) and the parity report (report.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy.errors import StmlError
from stml_deploy.package import PARITY_DIR, ModelPackage

GOLDEN_NAME = f"{PARITY_DIR}/golden.npz"
REPORT_NAME = f"{PARITY_DIR}/report.json"
REAL, RANDOM = 0, 1


def load_golden(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise StmlError(
            f"{path}: missing; run `stml export PACKAGE --format onnx` first (it writes the golden set)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in ("pixels", "kind", "embedding", "weights_sha256")}
    except (ValueError, KeyError, OSError) as exc:
        raise StmlError(f"{path}: damaged golden set ({exc})") from None


def read_report(package: ModelPackage) -> list[dict[str, Any]]:
    path = package.root / REPORT_NAME
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    return data.get("results", []) if isinstance(data, dict) else []
