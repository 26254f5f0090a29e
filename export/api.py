"""`export(package, format=...)`: the one entry point of exporting, for the CLI and for Python.
FORMATS is the table of formats: what each writes, the options it takes and their defaults,
named once (the CLI shows these defaults and warns about options the chosen format ignores)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stml_deploy.errors import StmlError

if TYPE_CHECKING:  # kept light: the CLI reads FORMATS for its option defaults at start-up
    from export.onnx_pipeline import OnnxExportRequest
    from export.report import ExportResult


@dataclass(frozen=True)
class ExportFormat:
    name: str
    writes: str  # what lands in the package
    options: dict[str, Any]  # option -> default


FORMATS = {
    "onnx": ExportFormat(
        "onnx",
        "onnx/model[.fp16|.int8].onnx, parity/golden.npz, parity/report.json",
        {
            "precisions": ("fp32", "fp16", "int8"),
            "int8_target": "cpu",
            "calib": None,
            "calib_size": 256,
            "parity_data": None,
            "parity_size": 500,
            "data_root": None,
            "max_batch": 256,
            "opset": 18,
            "keep_failed": False,
            "int8_search": True,
        },
    ),
    "trt": ExportFormat(
        "trt",
        "engines/<onnx-sha12>-<sm>-trt<version>-<precision>-b<min>_<opt>_<max>.engine + .json",
        {"precision": "fp16", "batch": "1,8,32", "workspace_gib": 2.0, "keep_failed": False},
    ),
}
DEFAULTS = {k: v for f in FORMATS.values() for k, v in f.options.items()}


def export_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise StmlError(f"unknown --format {name!r}; one of {', '.join(FORMATS)}")
    return FORMATS[name]


def ignored_options(format: str, given: dict[str, Any]) -> list[str]:
    """Options given (not None, not at their default) that `format` does not take."""
    taken = export_format(format).options
    return [
        k for k, v in given.items() if k not in taken and v is not None and v != DEFAULTS.get(k)
    ]


def onnx_request(package: str, **options: Any) -> OnnxExportRequest:
    """The "onnx" format's request, the table's defaults filled in."""
    from export.onnx_pipeline import OnnxExportRequest

    values = {**FORMATS["onnx"].options, **options}
    values["precisions"] = list(values["precisions"])
    return OnnxExportRequest(package, **values)


def export(package: str, format: str = "onnx", **options: Any) -> ExportResult:
    """Export a package folder; every artifact passes its parity check before it takes its
    name. `options` are the format's (FORMATS[format].options), e.g.

    >>> export("runs/shop", "onnx", precisions=["fp32", "int8"], calib="photos/")
    >>> export("shop", "trt", precision="fp16", batch="1,8,32")   # on the GPU machine
    """
    from stml_deploy.hub import is_hub_package, split_ref

    spec = export_format(format)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise StmlError(f"--format {format} takes no {', '.join(unknown)}")
    if is_hub_package(package):
        hub = split_ref(package)
        pull = hub.repo_id + (f"@{hub.revision}" if hub.revision else "")
        raise StmlError(
            f"{package}: export writes into the package; pull it into a folder first "
            f"(stml pull {pull} --out DIR)"
        )
    if format == "onnx":
        from export.onnx_pipeline import export_package_onnx

        return export_package_onnx(onnx_request(package, **options))
    from export.report import ExportResult
    from export.tensorrt_build import EngineRequest, build_engine_with_parity
    from stml_deploy.package import ModelPackage
    from stml_deploy.parity_files import REJECTED

    entry = build_engine_with_parity(EngineRequest(package, **{**spec.options, **options}))
    artifact = entry.artifact.removesuffix(REJECTED)
    return ExportResult(
        ModelPackage.load(package, verify=False),
        [entry],
        [artifact] if entry.passed else [],
        [f"{artifact}: {f}" for f in entry.check.failures],
    )
