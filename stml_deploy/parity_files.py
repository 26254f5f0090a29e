"""A package's parity/ folder: the golden set (golden.npz: real and random uint8 inputs with
their torch fp32 embeddings) and the parity report (report.json) as typed entries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stml_deploy.console import warn
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


REJECTED = " (rejected)"  # suffix of an artifact name whose check failed


@dataclass
class ParityCheck:
    """One artifact's measurements against torch fp32: tensor agreement on the golden set's
    real (and random) inputs, neighbour agreement on the parity images, and every tolerance
    broken (`failures`, empty when it passed)."""

    real: dict[str, float]  # max_abs_error, cosine_min, cosine_mean
    retrieval: dict[str, float]  # images, top10_overlap, recall_at_1[_reference|_drop|_flips]
    tolerances: dict[str, str]
    failures: list[str]
    random: dict[str, float] | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityEntry:
    """One row of parity/report.json: a check of one artifact on one runtime and device."""

    artifact: str  # relative path, with REJECTED appended when the check failed
    precision: str
    runtime: str
    provider: str
    device: str
    reference: str
    parity_data: str
    check: ParityCheck
    int8_target: str | None = None
    sha256: str | None = None  # of the artifact that passed
    checked_at: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.artifact, self.runtime, self.device

    @property
    def passed(self) -> bool:
        return self.check.passed

    @property
    def cosine_min(self) -> float:
        return self.check.real["cosine_min"]

    @property
    def top10_overlap(self) -> float:
        return self.check.retrieval["top10_overlap"]

    @property
    def recall_at_1_drop(self) -> float | None:
        return self.check.retrieval.get("recall_at_1_drop")

    def to_json(self) -> dict[str, Any]:
        tensor = {"real": self.check.real}
        if self.check.random is not None:
            tensor["random"] = self.check.random
        out: dict[str, Any] = {
            "artifact": self.artifact, "precision": self.precision, "runtime": self.runtime,
            "provider": self.provider, "device": self.device, "reference": self.reference,
            "parity_data": self.parity_data, "int8_target": self.int8_target,
            "tensor": tensor, "retrieval": self.check.retrieval,
            "tolerances": self.check.tolerances, "failures": self.check.failures,
            "passed": self.passed, "sha256": self.sha256, "checked_at": self.checked_at,
        }  # fmt: skip
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> ParityEntry:
        """Raises KeyError / TypeError / ValueError for a malformed entry."""
        tensor = data["tensor"]
        check = ParityCheck(
            real=_numbers(tensor["real"]),
            retrieval=_numbers(data["retrieval"]),
            tolerances={str(k): str(v) for k, v in (data.get("tolerances") or {}).items()},
            failures=[str(f) for f in data.get("failures") or []],
            random=_numbers(tensor["random"]) if tensor.get("random") is not None else None,
        )
        if bool(data["passed"]) != check.passed:
            raise ValueError("passed disagrees with failures")
        text = {k: str(data[k]) for k in ("artifact", "precision", "runtime", "device")}
        return cls(
            **text,
            provider=str(data.get("provider", "")),
            reference=str(data.get("reference", "")),
            parity_data=str(data.get("parity_data", "")),
            check=check,
            int8_target=data.get("int8_target"),
            sha256=data.get("sha256"),
            checked_at=data.get("checked_at"),
        )


def _numbers(data: Any) -> dict[str, float]:
    if not isinstance(data, dict) or not all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in data.values()
    ):
        raise TypeError("expected an object of numbers")
    return {str(k): v for k, v in data.items()}


def read_report(package: ModelPackage) -> list[ParityEntry]:
    """The entries of parity/report.json; a damaged file or entry is left out with a warning
    (the report is a record of checks, never an input to one)."""
    path = package.root / REPORT_NAME
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["results"]
        if not isinstance(rows, list):
            raise TypeError("results is not a list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        warn(f"{path}: damaged parity report ({exc}); ignored")
        return []
    entries = []
    for number, row in enumerate(rows, start=1):
        try:
            entries.append(ParityEntry.from_json(row))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            warn(
                f"{path}: parity result {number} is damaged ({type(exc).__name__}: {exc}); ignored"
            )
    return entries
