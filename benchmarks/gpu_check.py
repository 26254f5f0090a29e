"""`make gpu-check`: stml's GPU paths on one NVIDIA GPU, offline, in at most 8 minutes.

Checks (each one a JSON entry; `ok` is true, false, or null when skipped with its reason):
  environment         torch / CUDA / device, native bf16, what optional packages are present
  train_cuda          `stml train` of a small model on generated images, bf16 autocast (the
                      trainer sets channels_last on CUDA), `--compile` when `stml train --help`
                      lists it; the per-epoch loss must be finite and falling (needs faiss-cpu)
  throughput_resnet50 training steps of the paper's setting (ResNet-50, 224 px, 120 images x 2
                      views) on random pixels through the trainer's own step: images/s
  eval_cuda_vs_cpu    the deployed embedding on CUDA equals the CPU one (fp32)
  cuda_buffers        stml_deploy's device buffers (cuda-python, and the torch fallback):
                      a host -> device -> host round trip through pinned memory
  onnx_export         `stml export --format onnx` of the trained package (needs onnxscript)
  tensorrt            when tensorrt imports: engine build, parity gate, cache reuse, bench --json
  onnxruntime_gpu     when ONNX Runtime lists the CUDA provider: `stml bench --backends
                      onnx-cuda --json` parses and names the provider that ran
  gpu_tests           the `gpu`-marked tests (they train on scikit-learn's digits)

Prints one JSON summary on stdout (progress and subprocess output go to stderr). Exit 0 when
no check failed, 1 when one did, 2 with one line where there is no CUDA GPU."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGET_S = 8 * 60
OPTIONAL = ("faiss", "pytorch_metric_learning", "sklearn", "onnx", "onnxscript", "tensorrt")


def log(message: str) -> None:
    print(f"[gpu-check] {message}", file=sys.stderr, flush=True)


class Skip(Exception):
    """A check that cannot run here; the message says what is missing."""


def stml(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`stml ARGS` in a fresh interpreter; its stderr is passed on, stdout returned."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    sys.stderr.write(proc.stderr[-4000:])
    return proc


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def need(*modules: str) -> None:
    missing = [m for m in modules if not has(m)]
    if missing:
        raise Skip(f"needs {', '.join(missing)} (carry the wheels: see docs/gpu.md)")


class GpuCheck:
    def __init__(self, work: Path, throughput_steps: int) -> None:
        import torch

        self.torch = torch
        self.work = work
        self.steps = throughput_steps
        self.images = work / "images"
        self.package = work / "small"
        self.trained = False
        self.exported = False
        self.compile = False

    # --- checks -------------------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        torch = self.torch
        from training.device import bf16_native, resolve_amp

        cuda = torch.device("cuda")
        providers: list[str] = []
        if has("onnxruntime"):
            import onnxruntime

            providers = onnxruntime.get_available_providers()
        help_text = stml("train", "--help", timeout=120).stdout
        self.compile = "--compile" in help_text
        return {
            "ok": True,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "bf16_native": bf16_native(cuda),
            "amp_auto": str(resolve_amp("auto", cuda)),
            "onnxruntime_providers": providers,
            "cuda_python": has("cuda.bindings") or has("cuda.cudart"),
            "present": {m: has(m) for m in OPTIONAL},
            "train_has_compile": self.compile,
        }

    def train_cuda(self) -> dict[str, Any]:
        need("faiss")  # nearest-neighbour mining (training/sampler.py)
        from training.state import read_progress

        _write_images(self.images, classes=6, per_class=40, size=64)
        args = [
            "train", str(self.images), "--out", str(self.package), "--backbone", "resnet18",
            "--no-pretrained", "--image-size", "64", "--resize", "72", "--embedding-dim", "64",
            "--aux-dim", "128", "--batch-size", "60", "--neighbours", "4", "--epochs", "5",
            "--lr", "3e-4", "--momentum", "0.9", "--workers", "2", "--device", "cuda",
            "--amp", "bf16", "--overwrite",
        ]  # fmt: skip
        if self.compile:
            args.append("--compile")
        started = time.perf_counter()
        proc = stml(*args, timeout=200)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            return {"ok": False, "exit": proc.returncode, "error": proc.stderr.strip()[-500:]}
        losses = [round(e["total"], 5) for e in read_progress(self.package).history]
        finite = all(math.isfinite(v) for v in losses)
        self.trained = True
        return {
            "ok": finite and losses[-1] < losses[0],
            "epoch_losses": losses,
            "amp": "bf16",
            "compile": self.compile,
            "seconds": round(seconds, 1),
        }

    def throughput_resnet50(self) -> dict[str, Any]:
        import types

        torch = self.torch
        from training.config import TrainConfig
        from training.device import autocast_factory
        from training.model import make_teacher
        from training.package_io import build_student
        from training.trainer import Trainer, _optimizer

        cfg = TrainConfig(backbone="resnet50", pretrained=False, embedding_dim=512, aux_dim=1024,
                          image_size=224, batch_size=120, views=2)  # fmt: skip
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        student, _ = build_student(cfg)
        teacher = make_teacher(student)
        student.to(device, memory_format=torch.channels_last)
        teacher.to(device, memory_format=torch.channels_last)
        optimizer = _optimizer(student, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no scaling
        # the trainer's own step; it reads only these attributes of the trainer
        trainer = types.SimpleNamespace(
            device=device, cfg=cfg, autocast=autocast_factory(device, torch.bfloat16)
        )
        rows = cfg.batch_size * cfg.views
        pixels = torch.randint(0, 256, (rows, 3, 224, 224), dtype=torch.uint8).pin_memory()
        ids = torch.arange(cfg.batch_size).repeat_interleave(cfg.views)
        student.train()
        losses = []
        for _ in range(5):  # warm-up: cudnn autotuning
            Trainer._step(trainer, student, teacher, optimizer, scaler, pixels, ids)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(self.steps):
            terms = Trainer._step(trainer, student, teacher, optimizer, scaler, pixels, ids)
            losses.append(terms["total"])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return {
            "ok": all(math.isfinite(v) for v in losses),
            "setting": "resnet50 224px, 120 images x 2 views, bf16, channels_last, random pixels",
            "steps": self.steps,
            "images_per_s": round(rows * self.steps / seconds, 1),
            "steps_per_s": round(self.steps / seconds, 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "note": "host-to-device copy of a pinned batch included; no data loading or mining",
        }

    def eval_cuda_vs_cpu(self) -> dict[str, Any]:
        torch = self.torch
        from training.config import TrainConfig
        from training.package_io import build_student

        torch.manual_seed(0)
        cfg = TrainConfig(backbone="resnet18", pretrained=False, embedding_dim=64, aux_dim=128,
                          image_size=64)  # fmt: skip
        student, _ = build_student(cfg)
        student.eval()
        pixels = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8)
        with torch.inference_mode():
            cpu = student.embed(pixels)
            student.cuda()
            saved = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False  # fp32 against fp32
            try:
                gpu = student.embed(pixels.cuda()).cpu()
            finally:
                torch.backends.cudnn.allow_tf32 = saved
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = student.embed(pixels.cuda()).cpu()
        cosine = (cpu * gpu).sum(1)
        return {
            "ok": bool(cosine.min() > 0.9999),
            "fp32_cosine_min": round(float(cosine.min()), 6),
            "fp32_max_abs_error": float((cpu - gpu).abs().max()),
            "bf16_cosine_min": round(float((cpu * bf16).sum(1).min()), 6),
        }

    def cuda_buffers(self) -> dict[str, Any]:
        import numpy as np

        from stml_deploy.cuda_device import cudart, current_device
        from stml_deploy.trt_runtime import _CudaPythonBuffers, _TorchBuffers

        result: dict[str, Any] = {"device": current_device().name}
        kinds = [("torch", _TorchBuffers)]
        if cudart() is not None:
            kinds.insert(0, ("cuda_python", _CudaPythonBuffers))
        else:
            result["cuda_python"] = "not installed (carry cuda-python / cuda-bindings)"
        ok = True
        for name, kind in kinds:
            buffers = kind()
            try:
                source = buffers.host((4, 1000), np.float32)
                back = buffers.host((4, 1000), np.float32)
                source[:] = np.random.default_rng(0).normal(size=source.shape)
                back[:] = 0
                ptr = buffers.alloc(source.nbytes)
                buffers.to_device(ptr, source)
                buffers.to_host(back, ptr)
                buffers.synchronize()
                same = bool(np.array_equal(source, back))
                result[name] = {"round_trip_equal": same, "stream": buffers.stream_handle != 0}
                ok = ok and same
            finally:
                buffers.close()
        result["ok"] = ok
        return result

    def onnx_export(self) -> dict[str, Any]:
        if not self.trained:
            raise Skip("no trained package (train_cuda did not run)")
        need("onnx", "onnxscript")
        proc = stml("export", str(self.package), "--format", "onnx", "--precision", "fp32,fp16",
                    "--parity-data", str(self.images), timeout=240)  # fmt: skip
        self.exported = proc.returncode == 0
        return {"ok": self.exported, "exit": proc.returncode}

    def tensorrt(self) -> dict[str, Any]:
        need("tensorrt")
        if not self.exported:
            raise Skip("no exported package (onnx_export did not pass)")
        build = ("export", str(self.package), "--format", "trt", "--precision", "fp16",
                 "--batch", "1,8,32")  # fmt: skip
        started = time.perf_counter()
        first = stml(*build, timeout=300)
        build_s = time.perf_counter() - started
        again = stml(*build, timeout=120)
        bench = stml("bench", str(self.package), "--backends", "trt,onnx", "--precisions",
                     "fp16", "--repeats", "10", "--json", timeout=180)  # fmt: skip
        report = json.loads(bench.stdout) if bench.returncode == 0 else {}
        trt_rows = [r for r in report.get("rows", []) if r["backend"] == "trt"]
        return {
            "ok": first.returncode == 0 and "reusing" in again.stderr and bool(trt_rows),
            "build_seconds": round(build_s, 1),
            "reused": "reusing" in again.stderr,
            "bench": trt_rows,
        }

    def onnxruntime_gpu(self) -> dict[str, Any]:
        need("onnxruntime")
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise Skip("this onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)")
        if not self.exported:
            raise Skip("no exported package (onnx_export did not pass)")
        bench = stml("bench", str(self.package), "--backends", "onnx-cuda", "--precisions",
                     "fp32", "--repeats", "10", "--json", timeout=240)  # fmt: skip
        try:
            report = json.loads(bench.stdout)
        except json.JSONDecodeError:
            return {"ok": False, "error": "stdout is not JSON", "stdout": bench.stdout[:500]}
        return {"ok": bench.returncode == 0 and bool(report["rows"]), "rows": report["rows"]}

    def gpu_tests(self) -> dict[str, Any]:
        need("pytest", "faiss", "sklearn")  # the fixtures train on scikit-learn's digits
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        sys.stderr.write(proc.stdout[-6000:])
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        return {"ok": proc.returncode == 0, "exit": proc.returncode, "summary": summary}


def _write_images(folder: Path, classes: int, per_class: int, size: int) -> None:
    """Class folders of generated pictures (a shape and colour per class, jittered)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        colour = tuple(int(v) for v in rng.integers(40, 255, 3))
        for i in range(per_class):
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
            draw = ImageDraw.Draw(image)
            x, y = (int(v) for v in rng.integers(4, size // 3, 2))
            w = int(rng.integers(size // 3, size // 2))
            box = (x, y, x + w, y + w)
            [draw.ellipse, draw.rectangle, draw.pieslice][c % 3](
                box, fill=colour, **({"start": 0, "end": 90 + 45 * c} if c % 3 == 2 else {})
            )
            image.save(folder / f"class{c}" / f"{i:03d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput-steps", type=int, default=20)
    parser.add_argument("--work", type=Path, help="Working folder [default: a temporary one].")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: gpu-check needs torch (pip install 'stml[train]')", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(
            "error: no CUDA GPU here (torch.cuda.is_available() is False); run make gpu-check "
            "on a machine with an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stml-gpu-check-") as tmp:
        check = GpuCheck(args.work or Path(tmp), args.throughput_steps)
        names = ["environment", "train_cuda", "throughput_resnet50", "eval_cuda_vs_cpu",
                 "cuda_buffers", "onnx_export", "tensorrt", "onnxruntime_gpu", "gpu_tests"]  # fmt: skip
        results: dict[str, Any] = {}
        for name in names:
            results[name] = _run(name, getattr(check, name), started)
    failed = [n for n, r in results.items() if r.get("ok") is False]
    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "seconds": round(time.perf_counter() - started, 1),
        "failed": failed,
        "checks": results,
    }
    print(json.dumps(summary, indent=2, default=str))
    return 1 if failed else 0


def _run(name: str, check: Callable[[], dict[str, Any]], started: float) -> dict[str, Any]:
    if time.perf_counter() - started > BUDGET_S - 30:
        return {"ok": None, "skipped": "out of the 8-minute budget"}
    log(f"{name} ...")
    began = time.perf_counter()
    try:
        result = check()
    except Skip as reason:
        result = {"ok": None, "skipped": str(reason)}
    except subprocess.TimeoutExpired as exc:
        result = {"ok": False, "error": f"timed out after {exc.timeout:.0f} s"}
    except Exception as exc:  # one failing check must not hide the others' results
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
    result.setdefault("check_seconds", round(time.perf_counter() - began, 1))
    log(f"{name}: {'skipped' if result['ok'] is None else 'ok' if result['ok'] else 'FAILED'}")
    return result


if __name__ == "__main__":
    sys.exit(main())
