"""Benchmark: parity and speed of the exported variants, side by side in one run.

    .venv/bin/python benchmarks/exported_variants.py [--package runs/demo] [--data fashion-mnist] [--resnet18]

For the demo model (trained by `make demo`) and, with --resnet18, a random-init ResNet-18 at
224 px: exports fp32, fp16, int8 (cpu target) and int8 (tensorrt target) with calibration on the
training split and parity on the held-out test split of real images, then times torch eager
and each ONNX Runtime variant at batch 1 and 32 (median of interleaved runs, CPU)."""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export.api import export
from export.golden import preprocess_source
from export.report import cpu_name
from stml_deploy import onnx_runtime
from stml_deploy.config import DataRecord, TrainingRecord
from stml_deploy.package import ModelPackage
from stml_deploy.parity_files import read_report
from training.config import TrainConfig
from training.named_datasets import resolve_source
from training.package_io import architecture_of, build_student, load_student, write_package


def random_resnet18(root: Path, data: str) -> Path:
    cfg = TrainConfig(backbone="resnet18", pretrained=False, image_size=224, resize=256)
    torch.manual_seed(0)
    student, spec = build_student(cfg)
    summary = resolve_source(data, None, "train").summary(with_labels=False)
    record = TrainingRecord(cfg.to_dict(), DataRecord.from_json(summary), 0, False)
    write_package(root, student, architecture_of(cfg, student), spec, "resnet18-random", record)
    return root


def export_variants(package: Path, data: str, work: Path) -> dict[str, Path]:
    """Export into two copies (the two int8 targets share one file name); returns the files."""
    cpu, trt = work / "cpu", work / "trt"
    shutil.copytree(package, cpu)
    shutil.copytree(package, trt)
    common = dict(calib=data, parity_data=data, calib_size=256, parity_size=500)
    export(str(cpu), "onnx", precisions=["fp32", "fp16", "int8"], int8_target="cpu", **common)
    export(str(trt), "onnx", precisions=["int8"], int8_target="tensorrt", **common)
    return {
        "ORT fp32": cpu / "onnx/model.onnx",
        "ORT fp16": cpu / "onnx/model.fp16.onnx",
        "ORT int8 (cpu target)": cpu / "onnx/model.int8.onnx",
        "ORT int8 (tensorrt target)": trt / "onnx/model.int8.onnx",
    }


def speed_pixels(package: Path, data: str) -> np.ndarray:
    """The 32 preprocessed held-out images every runtime is timed on."""
    spec = ModelPackage.load(package, verify=False).preprocessing
    return preprocess_source(resolve_source(data, None, "test"), spec, 32, seed=5).pixels


def parity_rows(work: Path) -> list[str]:
    rows = []
    for copy, label in (("cpu", ""), ("trt", " (tensorrt target)")):
        for entry in read_report(ModelPackage.load(work / copy, verify=False)):
            if copy == "trt" and entry.precision != "int8":
                continue  # the trt copy only re-exports int8
            t, r = entry.check.real, entry.check.retrieval
            rows.append(
                f"| {entry.artifact}{label} | {t['max_abs_error']:.2e} | {t['cosine_min']:.6f} | {t['cosine_mean']:.6f} "
                f"| {r['top10_overlap']:.4f} | {100 * r['recall_at_1_reference']:.1f} | {100 * r['recall_at_1']:.1f} "
                f"| {100 * (r['recall_at_1'] - r['recall_at_1_reference']):+.1f} | {'pass' if entry.passed else 'FAIL'} |"
            )
    return rows


def speed_table(
    package: Path, files: dict[str, Path], pixels: np.ndarray, repeats: int, rounds: int = 3
) -> list[dict]:
    """Median seconds per batch of torch eager and each ONNX Runtime file, at batch 1 and 32."""
    net = load_student(ModelPackage.load(package, verify=False))
    sessions = {name: onnx_runtime.create_session(path) for name, path in files.items()}
    runners = {"torch eager fp32": lambda x: net.embed(torch.from_numpy(x))}
    runners.update(
        {name: (lambda x, s=s: s.run(None, {"pixels": x})[0]) for name, s in sessions.items()}
    )
    rows = []
    for batch in (1, 32):
        x = np.ascontiguousarray(pixels[:batch])
        times: dict[str, list[float]] = {name: [] for name in runners}
        with torch.inference_mode():
            # rounds of short blocks, alternating runtimes: load on the shared machine hits all
            # alike, and each block warms up first (ORT's idle threads spin for a while after a
            # run, which would slow whatever ran right after it)
            for _ in range(rounds):
                for name, fn in runners.items():
                    for _ in range(3):
                        fn(x)
                    for _ in range(max(1, repeats // rounds)):
                        started = time.perf_counter()
                        fn(x)
                        times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(t) for name, t in times.items()}
        for name, t in median.items():
            rows.append({"batch": batch, "runtime": name, "seconds": t,
                         "vs_torch": median["torch eager fp32"] / t, "vs_ort_fp32": median["ORT fp32"] / t})  # fmt: skip
    return rows


def speed_rows(table: list[dict]) -> list[str]:
    return [
        f"| {r['batch']} | {r['runtime']} | {r['seconds'] * 1e3:.2f} | {r['batch'] / r['seconds']:.0f} "
        f"| {r['vs_torch']:.2f}x | {r['vs_ort_fp32']:.2f}x |"
        for r in table
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", default="runs/demo")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument(
        "--resnet18", action="store_true", help="also a random-init ResNet-18 at 224 px"
    )
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(
        f"machine: {cpu_name()} ({platform.machine()}), torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnx_runtime.version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        models = [("demo model", Path(args.package))]
        if args.resnet18:
            models.append(
                ("random-init ResNet-18 @224", random_resnet18(Path(tmp) / "r18", args.data))
            )
        for label, package in models:
            work = Path(tmp) / label.replace(" ", "_")
            files = export_variants(package, args.data, work)
            spec = ModelPackage.load(package, verify=False).preprocessing
            pixels = speed_pixels(package, args.data)
            print(
                f"\n### {label} ({spec.image_size} px): parity against torch fp32, {args.data} test split\n"
            )
            print(
                "| artifact | max abs err | cos min | cos mean | top-10 overlap | R@1 torch | R@1 artifact | R@1 change (pt) | check |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            print("\n".join(parity_rows(work)))
            print(
                f"\n### {label}: speed (CPU, median of {args.repeats} runs in 3 alternating rounds)\n"
            )
            print("| batch | runtime | ms / batch | images/s | vs torch eager | vs ORT fp32 |")
            print("|---|---|---|---|---|---|")
            print("\n".join(speed_rows(speed_table(package, files, pixels, args.repeats))))


if __name__ == "__main__":
    main()
