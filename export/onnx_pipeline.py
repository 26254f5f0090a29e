"""`stml export --format onnx`: write the requested ONNX variants of a package, each checked
for parity against the torch fp32 model before it takes its final name (docs/design.md §3, §4)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.golden import ImageSet, golden_inputs, preprocess_source, save_golden
from export.int8_sensitivity import search_float_nodes
from export.onnx_export import check_export_options, export_onnx, onnx_metadata
from export.parity import compare
from export.quantize import INT8_TARGETS, Int8Quantizer
from export.report import ExportResult, cpu_name, parity_entry, record
from stml_deploy import onnx_runtime
from stml_deploy.atomic import sibling_path
from stml_deploy.console import info, warn
from stml_deploy.errors import StmlError
from stml_deploy.package import (
    ONNX_DIR,
    PRECISIONS,
    WEIGHTS_NAME,
    ModelPackage,
    check_precision,
    onnx_name,
)
from stml_deploy.parity_files import GOLDEN_NAME, ParityCheck, ParityEntry
from training.model import EmbeddingNet
from training.named_datasets import resolve_ref, resolve_source
from training.package_io import load_student
from training.sources import ImageSource


@dataclass
class OnnxExportRequest:
    """The options of export/api.py's "onnx" format (their defaults are named there)."""

    package: str
    precisions: list[str]
    int8_target: str
    calib: str | None
    calib_size: int
    parity_data: str | None
    parity_size: int
    data_root: str | None
    max_batch: int
    opset: int
    keep_failed: bool
    # an int8 model the gate rejects: search the fewest sensitive nodes to leave in float
    int8_search: bool = True
    golden_real: int = 32
    golden_random: int = 8


@dataclass
class _References:
    """What every variant is checked against: torch fp32 embeddings of the same inputs."""

    parity_name: str
    parity: ImageSet
    parity_embedding: np.ndarray
    golden_pixels: np.ndarray
    golden_kind: np.ndarray
    golden_embedding: np.ndarray


def ordered_precisions(wanted: list[str]) -> list[str]:
    """The precisions asked for, each checked, fp32 first (the others derive from it)."""
    if not wanted:
        raise StmlError(f"no precision given; choose from {', '.join(PRECISIONS)}")
    for precision in wanted:
        check_precision(precision)
    return [p for p in PRECISIONS if p in wanted]


def _data_source(
    arg: str | None, data_root: str | None, package: ModelPackage, split: str, option: str
) -> ImageSource:
    """Images given with --<option>, else the data the package was trained on: for a named
    dataset its `split` (parity: the held-out test classes), for a folder the folder."""
    if arg is not None:
        return resolve_source(arg, data_root, split)
    training = package.config.training
    ref = training.data.ref if training is not None and training.data is not None else None
    if ref is None:
        raise StmlError(
            f"--{option} DATA is needed: the package records no training data to default to"
        )
    try:
        return resolve_ref(replace(ref, split=split))
    except StmlError as exc:
        raise StmlError(f"{exc}; give --{option} DATA") from None


@torch.inference_mode()
def _torch_embed(net: EmbeddingNet, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate(
        [
            net.embed(torch.from_numpy(pixels[i : i + batch])).numpy()
            for i in range(0, len(pixels), batch)
        ]
    )


class OnnxExporter:
    def __init__(self, req: OnnxExportRequest) -> None:
        if req.int8_target not in INT8_TARGETS:
            raise StmlError(
                f"unknown --int8-target {req.int8_target!r}; one of {', '.join(INT8_TARGETS)}"
            )
        if req.calib_size < 1 or req.parity_size < 2:
            raise StmlError("--calib-size must be >= 1 and --parity-size >= 2")
        check_export_options(req.opset, req.max_batch)
        req = replace(req, precisions=ordered_precisions(list(req.precisions)))
        self.req = req
        self.package = ModelPackage.load(req.package, verify=False)
        self.package.verify(only=[WEIGHTS_NAME])
        self.net = load_student(self.package, "cpu")  # before anything is rewritten
        self._drop_missing_artifacts(self.package, req)
        self.spec = self.package.preprocessing

    @staticmethod
    def _drop_missing_artifacts(package: ModelPackage, req: OnnxExportRequest) -> None:
        """Derived artifacts that this export rewrites may be missing or stale; others that
        went missing are dropped from config.json with a warning."""
        rewritten = {onnx_name(p) for p in req.precisions} | {GOLDEN_NAME}
        for rel in [r for r in package.artifacts if r != WEIGHTS_NAME]:
            if rel in rewritten:
                continue
            if not package.path(rel).is_file():
                warn(
                    f"{package.path(rel)} is listed in config.json but missing; dropping it from the record"
                )
                package.forget_artifact(rel)
            else:
                package.verify(only=[rel])

    def run(self) -> ExportResult:
        req, package = self.req, self.package
        calibration = None
        if "int8" in req.precisions:  # fail on missing calibration data before any work
            calibration = self._calibration_images()
        references = self._references(calibration)
        self._write_golden(references)
        outcome = ExportResult(package, [], [], [])
        fp32_source = (
            package.onnx_path("fp32")
            if onnx_name("fp32") in package.artifacts and "fp32" not in req.precisions
            else None
        )
        for precision in req.precisions:
            pixels = calibration.pixels if calibration is not None and precision == "int8" else None
            entry = self._export_variant(precision, fp32_source, pixels, references)
            outcome.entries.append(entry)
            if entry.passed:
                outcome.written.append(onnx_name(precision))
                if precision == "fp32":
                    fp32_source = package.onnx_path("fp32")
            else:
                outcome.failures += [f"{onnx_name(precision)}: {f}" for f in entry.check.failures]
        record(package, outcome.entries)
        return outcome

    def _references(self, calibration: ImageSet | None) -> _References:
        """Parity images (not the calibration images) and golden inputs with their torch fp32
        embeddings."""
        req = self.req
        info("parity images: preprocessing and torch fp32 reference")
        source = _data_source(req.parity_data, req.data_root, self.package, "test", "parity-data")
        source = _without(source, calibration)
        parity = preprocess_source(source, self.spec, req.parity_size, seed=1, what="parity images")
        if len(parity.pixels) < 2:
            raise StmlError(f"{source.root}: parity checks need at least 2 readable images")
        golden_pixels, golden_kind = golden_inputs(
            parity.pixels, req.golden_real, req.golden_random
        )
        return _References(
            source.name,
            parity,
            _torch_embed(self.net, parity.pixels),
            golden_pixels,
            golden_kind,
            _torch_embed(self.net, golden_pixels),
        )

    def _write_golden(self, ref: _References) -> None:
        package = self.package
        (package.root / ONNX_DIR).mkdir(exist_ok=True)
        save_golden(
            package.path(GOLDEN_NAME),
            ref.golden_pixels,
            ref.golden_kind,
            ref.golden_embedding,
            package.weights_sha256,
        )
        package.record_artifact(
            GOLDEN_NAME,
            kind="golden",
            real=int((ref.golden_kind == 0).sum()),
            random=int((ref.golden_kind == 1).sum()),
        )

    def _export_variant(
        self,
        precision: str,
        fp32_source: Path | None,
        calibration: np.ndarray | None,
        ref: _References,
    ) -> ParityEntry:
        """Export one variant under a temporary name, check it on ONNX Runtime's CPU provider,
        and give it its final name only if it passed (an earlier artifact of this precision
        otherwise stays as it was)."""
        package, rel = self.package, onnx_name(precision)
        final = package.path(rel)
        tmp = sibling_path(final)
        try:
            info(f"{rel}: exporting")
            if precision == "int8":
                details, check = self._build_int8(tmp, fp32_source, calibration, ref)
            else:
                details = self._build(precision, tmp)
                info(f"{rel}: parity on ONNX Runtime CPU")
                check = self._parity(precision, tmp, ref)
            sha256 = None
            if check.passed:
                os.replace(tmp, final)
                package.record_artifact(
                    rel, kind="onnx", precision=precision, opset=self.req.opset, **details
                )
                sha256 = package.artifacts[rel].sha256
            elif self.req.keep_failed:
                os.replace(tmp, final.with_name(final.name + ".failed"))
            return parity_entry(
                check, rel, precision, f"onnxruntime {onnx_runtime.version()}",
                onnx_runtime.CPU, f"cpu: {cpu_name()}", "torch fp32 (model.safetensors)",
                ref.parity_name, details.get("int8_target"), sha256,
            )  # fmt: skip
        finally:
            tmp.unlink(missing_ok=True)

    def _parity(self, precision: str, path: Path, ref: _References) -> ParityCheck:
        """The gate: `path` on ONNX Runtime's CPU provider against the torch fp32 references."""
        session = onnx_runtime.create_session(path)
        return compare(
            precision,
            onnx_runtime.run_batches(session, ref.golden_pixels),
            ref.golden_embedding,
            ref.golden_kind,
            onnx_runtime.run_batches(session, ref.parity.pixels),
            ref.parity_embedding,
            ref.parity.labels,
        )

    def _build(self, precision: str, tmp: Path) -> dict[str, Any]:
        dtype = torch.float32 if precision == "fp32" else torch.float16
        export_onnx(
            copy.deepcopy(self.net),
            tmp,
            self.spec.image_size,
            onnx_metadata(self.package, precision),
            dtype,
            self.req.opset,
            self.req.max_batch,
        )
        return {}

    def _build_int8(
        self, tmp: Path, fp32_source: Path | None, calibration: np.ndarray, ref: _References
    ) -> tuple[dict[str, Any], ParityCheck]:
        """Quantize with the recipe; if the gate rejects it, leave the most sensitive nodes in
        float (export/int8_sensitivity.py) until it passes or the budget is spent."""
        req = self.req
        base = fp32_source
        scratch = None
        if base is None:  # int8 alone: quantize from a temporary fp32 export
            scratch = base = sibling_path(self.package.path(onnx_name("fp32")))
            self._build("fp32", base)
        try:
            info(
                f"{onnx_name('int8')}: calibrating on {len(calibration)} images ({req.int8_target} target)"
            )
            with Int8Quantizer(base, tmp.parent, calibration, req.int8_target) as quantizer:
                details = quantizer.quantize(tmp, [])
                info(f"{onnx_name('int8')}: parity on ONNX Runtime CPU")
                check = self._parity("int8", tmp, ref)
                if not check.passed and req.int8_search and quantizer.candidates:
                    details, check = self._float_sensitive_nodes(quantizer, base, tmp, ref, check)
            self._stamp_int8(tmp)
        finally:
            if scratch is not None:
                scratch.unlink(missing_ok=True)
        return details, check

    def _float_sensitive_nodes(
        self,
        quantizer: Int8Quantizer,
        base: Path,
        tmp: Path,
        ref: _References,
        first: ParityCheck,
    ) -> tuple[dict[str, Any], ParityCheck]:
        """The recipe's int8 failed the gate: search the fewest most sensitive nodes to leave
        in float. Recorded either way (config.json's int8 record, or the failure report)."""
        rel = onnx_name("int8")
        info(
            f"{rel}: rejected by the parity gate; ranking its {len(quantizer.candidates)} "
            "quantized nodes by sensitivity"
        )
        search = search_float_nodes(
            quantizer, base, tmp, lambda path: self._parity("int8", path, ref)
        )
        details = {**quantizer.describe(search.float_nodes), **search.record()}
        if search.check is None:
            info(
                f"{rel}: still rejected with up to {max(search.tried)} of {search.candidates} "
                "quantizable nodes left in float"
            )
            return details, first
        info(
            f"{rel}: passes with {len(search.float_nodes)} of {search.candidates} quantizable "
            "nodes left in float (most sensitive first)"
        )
        return details, search.check

    def _stamp_int8(self, path: Path) -> None:
        self._stamp_metadata(
            path, onnx_metadata(self.package, "int8", {"int8_target": self.req.int8_target})
        )

    def _calibration_images(self) -> ImageSet:
        req = self.req
        source = _data_source(req.calib, req.data_root, self.package, "train", "calib")
        found = preprocess_source(
            source, self.spec, req.calib_size, seed=2, what="calibration images"
        )
        if len(found.pixels) < req.calib_size:
            raise StmlError(
                f"{source.root}: only {len(found.pixels)} readable calibration images, "
                f"--calib-size asks for {req.calib_size} (lower it or give more images with --calib)"
            )
        return found

    @staticmethod
    def _stamp_metadata(path: Path, meta: dict[str, str]) -> None:
        import onnx

        model = onnx.load(str(path))
        existing = {p.key: p for p in model.metadata_props}
        for key, value in meta.items():
            if key in existing:
                existing[key].value = value
            else:
                model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))


def _without(source: ImageSource, calibration: ImageSet | None) -> ImageSource:
    """Parity images drawn from the calibration folder leave out the calibration images, so
    the int8 check measures images the quantizer has not seen."""
    if calibration is None or not source.is_files:
        return source
    seen = set(calibration.items)
    keep = [i for i, path in enumerate(source.items) if str(path) not in seen]
    if len(keep) == len(source):
        return source
    if len(keep) < 2:
        warn(
            f"{source.root}: every parity image is also a calibration image; the int8 check "
            "is optimistic (give --parity-data with other images)"
        )
        return source
    return source.subset(keep)


def export_package_onnx(req: OnnxExportRequest) -> ExportResult:
    return OnnxExporter(req).run()
