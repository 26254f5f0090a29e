"""Benchmark: modern backbones through export, side by side in one run (docs/benchmarks.md,
"Backbones").

    .venv/bin/python benchmarks/backbones.py choices PACKAGE [PACKAGE...] [--data fashion-mnist]
    .venv/bin/python benchmarks/backbones.py speed [--size 224] [--families resnet18,vit_small...]
    .venv/bin/python benchmarks/backbones.py profile [--family ViT-S] [--batches 1,8] [--threads 1]

`choices`: for packages trained on real data (the gate is judged on models trained >= 2 epochs
on Fashion-MNIST), the int8 parity of each quantization recipe (which ops, calibration
method, per-channel), calibrated on the training split, checked on the held-out test split
against torch fp32 with the export gate's own tolerances.

`speed`: per family, a random-init network at --size px (random init is enough for speed):
the export pipeline's fp32 / fp16 / int8 (cpu target) with its parity gate on Fashion-MNIST,
then torch eager and each ONNX Runtime variant at batch 1 and 32 on the CPU (median of
interleaved runs: exported_variants.speed_rows).

`profile`: why int8 is as fast as it is. A random-init network at --size px, its fp32 ONNX and
an int8 file per recipe in PROFILED, timed side by side (interleaved, --threads intra-op
threads), then ONNX Runtime's own profiler: kernel time per op type after ORT's graph
fusions (QLinearMatMul / MatMulIntegerToFloat show whether the int8 MatMuls were fused)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from exported_variants import speed_rows

from export.api import export, onnx_request
from export.onnx_export import export_onnx, onnx_metadata
from export.onnx_pipeline import OnnxExporter
from export.quantize import Int8Recipe, quantize_int8
from export.report import cpu_name
from stml_deploy import onnx_runtime
from stml_deploy.config import DataRecord, DataRef, TrainingRecord
from stml_deploy.package import ModelPackage
from stml_deploy.parity_files import read_report
from training.config import TrainConfig
from training.named_datasets import resolve_source
from training.package_io import architecture_of, build_student, load_student, write_package

DEFAULT = Int8Recipe()
ORT_DEFAULT = Int8Recipe(op_types=None, weight_matmuls_only=False)  # what stml did before
RECIPES: dict[str, Int8Recipe] = {
    "all ORT ops, MinMax (before)": ORT_DEFAULT,
    "Conv/MatMul/Gemm, MinMax": DEFAULT,
    "Conv/MatMul/Gemm, Percentile 99.999": replace(DEFAULT, calibration="percentile"),
    "Conv/MatMul/Gemm, Entropy": replace(DEFAULT, calibration="entropy"),
    "Conv/MatMul/Gemm, MinMax, per-tensor": replace(DEFAULT, per_channel=False),
    "Conv/MatMul/Gemm + attention MatMuls, MinMax": replace(DEFAULT, weight_matmuls_only=False),
    "Conv/MatMul/Gemm, MinMax, 8-bit weights": replace(DEFAULT, reduce_range=False),
    "Conv/MatMul/Gemm, MinMax, depthwise in float": replace(DEFAULT, float_depthwise=True),
    "Conv/MatMul/Gemm, Percentile, depthwise in float": replace(
        DEFAULT, calibration="percentile", float_depthwise=True
    ),
    "Conv/MatMul/Gemm, MatMul outputs in float": replace(DEFAULT, float_matmul_outputs=True),
}
PROFILED: dict[str, Int8Recipe] = {
    "int8, MatMul outputs int8 (QLinearMatMul)": replace(DEFAULT, float_matmul_outputs=False),
    "int8, MatMul outputs float (MatMulIntegerToFloat; default)": DEFAULT,
    "int8 + attention MatMuls": replace(DEFAULT, weight_matmuls_only=False),
    "int8, per-tensor weights": replace(DEFAULT, per_channel=False),
    "int8, 8-bit weights": replace(DEFAULT, reduce_range=False),
}
FAMILIES = {  # family: (timm name, what it stands for)
    "ResNet": "resnet18",
    "ConvNeXt": "convnext_atto",
    "EfficientNet": "efficientnet_b0",
    "MobileNetV3": "mobilenetv3_small_100",
    "ViT-S": "vit_small_patch16_224",
    "ViT-S + registers": "vit_small_patch14_reg4_dinov2",
}


def choices(packages: list[Path], data: str, targets: list[str], only: list[str]) -> None:
    print("| model | recipe | target | cos min | cos mean | top-10 | R@1 torch | R@1 int8 | gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for package in packages:
        exporter = OnnxExporter(
            onnx_request(str(package), precisions=["int8"], calib=data, parity_data=data)
        )
        calibration = exporter._calibration_images()
        ref = exporter._references(calibration)
        arch = exporter.package.config.architecture
        label = f"{arch.backbone} @{arch.image_size} ({arch.pooling})"
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            export_onnx(
                exporter.net, fp32, arch.image_size, onnx_metadata(exporter.package, "fp32"),
                torch.float32, exporter.req.opset, exporter.req.max_batch,
            )  # fmt: skip
            for target in targets:
                for name, recipe in RECIPES.items():
                    if only and name not in only:
                        continue
                    out = Path(tmp) / "int8.onnx"
                    quantize_int8(fp32, out, calibration.pixels, target, recipe=recipe)
                    check = exporter._parity("int8", out, ref)  # the export's own gate
                    t, r = check.real, check.retrieval
                    print(
                        f"| {label} | {name} | {target} | {t['cosine_min']:.4f} | {t['cosine_mean']:.4f} "
                        f"| {r['top10_overlap']:.3f} | {100 * r['recall_at_1_reference']:.1f} "
                        f"| {100 * r['recall_at_1']:.1f} | {'pass' if check.passed else 'FAIL'} |",
                        flush=True,
                    )


def size_of(net: torch.nn.Module, size: int) -> tuple[int, float]:
    """Parameters and forward FLOPs per image (torch's flop counter: matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net.embed(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    return sum(p.numel() for p in net.parameters()), counter.get_total_flops() / 1e9


def random_package(root: Path, backbone: str, size: int, data: str) -> Path:
    cfg = TrainConfig(backbone=backbone, pretrained=False, image_size=size, resize=size)
    torch.manual_seed(0)
    student, spec = build_student(cfg)
    ref = resolve_source(data, None, "train").description["ref"]
    source = resolve_source(data, None, "train")
    record = DataRecord(source.name, len(source), ref=DataRef(**ref))
    training = TrainingRecord(cfg.to_dict(), record, epochs_done=0, complete=False)
    write_package(root, student, architecture_of(cfg, student), spec, backbone, training)
    return root


def speed(families: list[str], size: int, data: str, repeats: int) -> None:
    from export.golden import preprocess_source

    for family in families:
        backbone = FAMILIES.get(family, family)
        with tempfile.TemporaryDirectory() as tmp:
            package = random_package(Path(tmp) / "pkg", backbone, size, data)
            result = export(
                str(package), calib=data, parity_data=data, calib_size=128, parity_size=300
            )
            loaded = ModelPackage.load(package, verify=False)
            params, gflops = size_of(load_student(loaded), size)
            print(
                f"\n### {family} ({backbone}, random init, {size} px, pooling "
                f"{loaded.config.architecture.pooling}): {params / 1e6:.2f} M parameters, "
                f"{gflops:.2f} GFLOPs (multiply-adds x 2) per image\n"
            )
            print("| artifact | cos min | top-10 | R@1 change (pt) | gate |")
            print("|---|---|---|---|---|")
            for entry in read_report(loaded):
                t, r = entry.check.real, entry.check.retrieval
                print(
                    f"| {entry.artifact} | {t['cosine_min']:.5f} | {r['top10_overlap']:.3f} "
                    f"| {100 * (r['recall_at_1'] - r['recall_at_1_reference']):+.1f} | {'pass' if entry.passed else 'FAIL'} |"
                )
            files = {
                {"fp32": "ORT fp32", "fp16": "ORT fp16", "int8": "ORT int8"}[p]: loaded.onnx_path(p)
                for p in ("fp32", "fp16", "int8")
                if f"onnx/{loaded.onnx_path(p).name}" in result.written
            }
            pixels = preprocess_source(
                resolve_source(data, None, "test"), loaded.preprocessing, 32, seed=5
            ).pixels
            print("\n| batch | runtime | ms / batch | images/s | vs torch eager | vs ORT fp32 |")
            print("|---|---|---|---|---|---|")
            print("\n".join(speed_rows(package, files, pixels, repeats)), flush=True)


def _session(path: Path, threads: int, profile_prefix: str | None = None) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=[onnx_runtime.CPU])


def _op_times(session: object, x: np.ndarray, runs: int) -> dict[str, tuple[float, int]]:
    """ms per run and node count per op type, from ONNX Runtime's profiler."""
    for _ in range(runs):
        session.run(None, {"pixels": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
            count[e["args"]["op_name"]] += 1
    return {op: (ms, count[op] // runs) for op, ms in total.items()}


def profile(family: str, size: int, data: str, batches: list[int], threads: int, runs: int) -> None:
    from export.golden import preprocess_source

    backbone = FAMILIES.get(family, family)
    cfg = TrainConfig(backbone=backbone, pretrained=False, image_size=size, resize=size)
    torch.manual_seed(0)
    net, spec = build_student(cfg)
    calibration = preprocess_source(resolve_source(data, None, "train"), spec, 64, seed=2).pixels
    with tempfile.TemporaryDirectory() as tmp:
        files = {"ORT fp32": Path(tmp) / "fp32.onnx"}
        export_onnx(net, files["ORT fp32"], size, {}, torch.float32, 18, 64)
        for n, (name, recipe) in enumerate(PROFILED.items()):
            files[name] = Path(tmp) / f"int8_{n}.onnx"
            quantize_int8(files["ORT fp32"], files[name], calibration, "cpu", recipe=recipe)
        print(
            f"\n### {family} ({backbone}, random init, {size} px), {threads} intra-op thread(s)\n"
        )
        print("| batch | model | ms / batch | vs ORT fp32 |\n|---|---|---|---|")
        sessions = {name: _session(path, threads) for name, path in files.items()}
        for batch in batches:
            x = np.ascontiguousarray(np.resize(calibration, (batch, *calibration.shape[1:])))
            times: dict[str, list[float]] = {name: [] for name in files}
            for s in sessions.values():  # warm-up
                s.run(None, {"pixels": x})
            for _ in range(runs):  # rounds alternating the models
                for name, s in sessions.items():
                    started = time.perf_counter()
                    s.run(None, {"pixels": x})
                    times[name].append(time.perf_counter() - started)
            base = statistics.median(times["ORT fp32"])
            for name, t in times.items():
                m = statistics.median(t)
                print(f"| {batch} | {name} | {1e3 * m:.1f} | {base / m:.2f}x |")
        shown = ["ORT fp32", *list(PROFILED)[:3]]
        for batch in batches:
            x = np.ascontiguousarray(np.resize(calibration, (batch, *calibration.shape[1:])))
            table = {}
            for name in shown:
                s = _session(files[name], threads, str(Path(tmp) / "prof"))
                s.run(None, {"pixels": x})
                table[name] = _op_times(s, x, max(2, runs // 2))
            ops = sorted({op for t in table.values() for op in t},
                         key=lambda op: -max(t.get(op, (0, 0))[0] for t in table.values()))  # fmt: skip
            print(f"\nORT profiler, batch {batch}: ms per run (nodes) per op type\n")
            print("| op type | " + " | ".join(shown) + " |\n|---|" + "---|" * len(shown))
            for op in ops:
                cells = [f"{t[op][0]:.1f} ({t[op][1]})" if op in t else "" for t in table.values()]
                if max(t.get(op, (0, 0))[0] for t in table.values()) >= 0.5:
                    print(f"| {op} | " + " | ".join(cells) + " |")
            sums = [f"{sum(ms for ms, _ in t.values()):.1f}" for t in table.values()]
            print("| **all kernels** | " + " | ".join(sums) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("choices")
    c.add_argument("packages", nargs="+", type=Path)
    c.add_argument("--data", default="fashion-mnist")
    c.add_argument("--targets", default="cpu")
    c.add_argument("--recipes", default="", help="names of RECIPES, separated by ';' (default all)")
    s = sub.add_parser("speed")
    s.add_argument("--families", default=",".join(FAMILIES))
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--data", default="fashion-mnist")
    s.add_argument("--repeats", type=int, default=6)
    p = sub.add_parser("profile")
    p.add_argument("--family", default="ViT-S")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    print(
        f"machine: {cpu_name()} ({platform.machine()}), torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnx_runtime.version()}"
    )
    if args.mode == "profile":
        profile(args.family, args.size, args.data, [int(b) for b in args.batches.split(",")],
                args.threads, args.runs)  # fmt: skip
    elif args.mode == "choices":
        choices(
            args.packages,
            args.data,
            args.targets.split(","),
            [r for r in args.recipes.split(";") if r],
        )
    else:
        speed(args.families.split(","), args.size, args.data, args.repeats)


if __name__ == "__main__":
    main()
