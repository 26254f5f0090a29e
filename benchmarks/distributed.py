"""Benchmark: DDP training on the CPU (gloo) with 1 and 2 processes, and the on-paper cost of
the global batch and of nearest-neighbour mining at scale.

    .venv/bin/python benchmarks/distributed.py [--images 240] [--epochs 2] [--repeats 2] [--knn-rows 10000]

Measured: per-step time and images/s of the last epoch (best of --repeats alternated runs) (the history's epoch seconds cover the
steps, not mining) for one process and for two started by torch's launcher, on the same global
batch and seed, and the largest weight difference between the two packages (test_vit, no
BatchNorm). On a 2-core machine two ranks share the cores: this shows what the gathers and the
gradient all-reduce cost, not a speed-up. Also the exact kNN time at --knn-rows x 1024 on this
CPU, from which the mining cost at 1M and 10M images is extrapolated (O(M^2 d)).
Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TINY = dict(backbone="test_vit", pretrained=False, image_size=32, resize=32, embedding_dim=16,
            aux_dim=32, batch_size=40, neighbours=4, lr=3e-3, momentum=0.9, workers=0)  # fmt: skip
PAPER = dict(batch=120, views=2, f=512, g=1024, resnet50_params=25.6e6)


def _run(out: Path, images: int, epochs: int, nproc: int) -> dict:
    from training.api import train

    package = train("digits", out, max_images=images, epochs=epochs, nproc=nproc, **TINY)
    last = package.config.training.history[-1]
    steps = images // TINY["batch_size"]
    seconds = last["seconds"]
    rows = steps * TINY["batch_size"] * 2  # views
    return {"package": package, "step_ms": 1000 * seconds / steps, "images_per_s": rows / seconds}


def _weight_difference(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa if not k.startswith("pixel_"))
    norm = sum(float((wa[k] - wb[k]).pow(2).sum()) for k in wa) ** 0.5
    scale = sum(float(wa[k].pow(2).sum()) for k in wa if not k.startswith("pixel_")) ** 0.5
    return {"max_abs": worst, "relative_l2": norm / scale}


def _knn_seconds(rows: int, dim: int = 1024) -> float:
    from stml_deploy.neighbours import nearest

    vectors = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    started = time.perf_counter()
    nearest(vectors, vectors, 4, "l2", exclude_self=True)
    return time.perf_counter() - started


def on_paper(knn_rows: int, knn_s: float) -> dict:
    """The gather volume per step at the paper's settings and the mining cost at scale."""
    rows = PAPER["batch"] * PAPER["views"]
    student = rows * (PAPER["f"] + PAPER["g"]) * 4  # forward all-gather of f and g
    teacher = rows * PAPER["g"] * 4 + rows * 8  # teacher g and int64 ids, no gradient
    grads_allreduce = PAPER["resnet50_params"] * 4
    scale = {}
    for m in (1_000_000, 10_000_000):
        scale[f"{m:,}"] = {
            "g_embeddings_gb": m * PAPER["g"] * 4 / 1e9,
            "exact_knn_flop": 2.0 * m * m * PAPER["g"],
            "exact_knn_hours_this_cpu": knn_s * (m / knn_rows) ** 2 / 3600,
            "table_mb": m * 5 * 8 / 1e6,
        }
    return {
        "global_batch_rows": rows,
        "student_gather_mb_per_step": student / 1e6,
        "student_gather_backward_mb_per_step": student / 1e6,
        "teacher_and_ids_gather_mb_per_step": teacher / 1e6,
        "resnet50_gradient_allreduce_mb_per_step": grads_allreduce / 1e6,
        "mining": scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--knn-rows", type=int, default=10000)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    # (processes, torch threads per process): one process on all cores, one on one core (the
    # per-rank share of two), and two processes of cores / 2 threads (what --nproc 2 sets)
    setups = [(1, cores), (1, max(1, cores // 2)), (2, max(1, cores // 2))]
    runs: dict[tuple[int, int], list[dict]] = {setup: [] for setup in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # alternated: the machine is shared
            for nproc, threads in setups:
                if nproc == 1:  # (--nproc 2 sets its ranks' threads itself)
                    torch.set_num_threads(threads)
                out = Path(tmp) / f"{nproc}-{threads}-{repeat}"
                runs[(nproc, threads)].append(_run(out, args.images, args.epochs, nproc))
        diff = _weight_difference(
            runs[setups[0]][0]["package"].path("model.safetensors"),
            runs[setups[2]][0]["package"].path("model.safetensors"),
        )
    best = {
        f"{n} process(es) x {t} thread(s)": {
            "step_ms": min(r["step_ms"] for r in runs[(n, t)]),
            "images_per_s": max(r["images_per_s"] for r in runs[(n, t)]),
            "step_ms_each_run": [round(r["step_ms"], 1) for r in runs[(n, t)]],
        }
        for n, t in setups
    }
    knn_s = _knn_seconds(args.knn_rows)
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "images": args.images, "epochs": args.epochs, "global_batch": TINY["batch_size"],
        **best, "weights_two_vs_one": diff, "knn_rows": args.knn_rows, "knn_seconds": knn_s,
        "on_paper": on_paper(args.knn_rows, knn_s),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
