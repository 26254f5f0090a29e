"""Benchmark: where STML's training time goes, how cost grows, and inference per backend (issue 11).
`make bench-perf` writes docs/perf.json and the plots docs/perf-step.png, docs/perf-search.png.

    PYTHONPATH=. .venv/bin/python benchmarks/perf.py [--quick] [--package runs/demo/model]
        [--json docs/perf.json] [--plots docs]

1. One training step on the CPU, broken down as the trainer runs it (training/trainer.py
   Trainer._step): student forward, teacher forward, pseudo labels W, the STML losses (forward
   and backward, on the heads' outputs), the network's backward, the optimizer step and the EMA
   update, for N = 120, 240, 480, 960 batch rows (images x 2 views). The batch is made once
   (the augmentation is timed on its own line). "STML's own work" is W + losses + EMA: what a
   plain metric-learning step would not do; the teacher forward is the other extra.
2. One epoch: the nearest-neighbour mining (embedding every training image, then the exact
   neighbour table with faiss and with numpy) against the epoch's steps, on the demo's 6,000
   images; and a real 1-epoch run of the trainer, whose history gives the loop's seconds.
3. Exact search time against gallery size (10k -> 1M, 128 and 512 dims; faiss and numpy) and
   HNSW up to 100k.
4. With --package (a trained package, e.g. `make demo`'s runs/demo/model): the exported
   variants' CPU speed per backend and precision (benchmarks/exported_variants.py).
Every time is the median of repeated runs, all in this one process (the machine is shared:
compare ratios within the run)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accuracy import machine, save_png
from exported_variants import speed_rows
from pseudo_labels import median_time

from stml_deploy.atomic import atomic_write_text
from training.demo import demo_config
from training.embedding import embed_source
from training.loaders import MultiViewDataset, collate_views
from training.losses import stml_loss
from training.model import make_teacher
from training.named_datasets import fashion_mnist_file
from training.package_io import build_student
from training.sampler import nearest_neighbour_table
from training.similarity import contextual_similarity
from training.teacher import ema_update
from training.trainer import TrainRequest, _optimizer, train

PARTS = ("student forward", "teacher forward", "pseudo labels W", "losses (fwd+bwd)",
         "network backward", "optimizer step", "EMA update")  # fmt: skip
STML_OWN = ("pseudo labels W", "losses (fwd+bwd)", "EMA update")


def step_breakdown(backbone: str, size: int, rows: int, repeats: int) -> dict:
    """Seconds per part of one training step with `rows` batch rows (rows / 2 images x 2 views)."""
    cfg = replace(demo_config(1), backbone=backbone, image_size=size, resize=size,
                  batch_size=rows // 2)  # fmt: skip
    torch.manual_seed(0)
    student, spec = build_student(cfg)
    teacher = make_teacher(student)
    optimizer = _optimizer(student, cfg)
    source = fashion_mnist_file("train", range(0, 5)).limit(rows // 2, seed=0)
    dataset = MultiViewDataset(source, spec, cfg.views)
    keys = [(i, i) for i in range(len(source))]
    make_batch = lambda: collate_views([dataset[k] for k in keys])  # noqa: E731
    augment = median_time(make_batch, max(1, repeats // 2))
    pixels, ids = make_batch()
    student.train()
    state: dict[str, torch.Tensor] = {}

    def student_forward() -> None:
        state["f"], state["g"] = student(pixels)

    def teacher_forward() -> None:
        with torch.no_grad():
            state["tg"] = teacher(pixels)[1]

    def pseudo_labels() -> None:
        state["w"] = contextual_similarity(state["tg"], ids, cfg.sigma, cfg.topk)

    def losses() -> None:
        f = state["f"].detach().requires_grad_(True)
        g = state["g"].detach().requires_grad_(True)
        stml_loss(f, g, state["w"], cfg.delta).total.backward()
        state["grads"] = (f.grad, g.grad)

    def backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward([state["f"], state["g"]], list(state["grads"]))

    def step() -> None:
        optimizer.step()

    def ema() -> None:
        ema_update(teacher, student, cfg.momentum)

    parts = dict(zip(PARTS, (student_forward, teacher_forward, pseudo_labels, losses, backward,
                             step, ema), strict=True))  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in PARTS}
    for round_ in range(repeats + 1):  # the parts in the trainer's order; round 0 warms up
        for name, fn in parts.items():
            started = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - started)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    total = sum(seconds.values())
    return {
        "backbone": backbone, "image_size": size, "rows": rows, "parts": seconds,
        "step_seconds": total, "augmentation_seconds": augment,
        "stml_own_share": sum(seconds[p] for p in STML_OWN) / total,
        "teacher_share": seconds["teacher forward"] / total,
    }  # fmt: skip


def mining_cost(images: int, repeats: int) -> dict:
    """The per-epoch mining of the demo setting (cpu-small, 32 px): embed all training images
    with the student's g, then the neighbour table, faiss and numpy."""
    cfg = demo_config(1)
    torch.manual_seed(0)
    student, spec = build_student(cfg)
    student.eval()
    source = fashion_mnist_file("train", range(0, 5)).limit(images, seed=0)
    holder: dict[str, np.ndarray] = {}

    def embed() -> None:
        with torch.inference_mode():
            holder["g"] = embed_source(
                student.embed_aux, source, spec, torch.device("cpu"), 256, 0, False, "mining"
            ).vectors

    embed_s = median_time(embed, max(1, repeats // 2))
    table = {
        engine: median_time(
            lambda e=engine: nearest_neighbour_table(holder["g"], cfg.neighbours, e), repeats
        )
        for engine in ("faiss", "numpy")
    }
    return {"images": images, "embed_seconds": embed_s, "table_seconds": table}


def trainer_epoch(images: int, workers: int) -> dict:
    """A real 1-epoch run of the trainer on the demo setting: the loop's seconds from its
    history, and the whole call's (the rest is the mining, setup and the package write)."""
    cfg = demo_config(1)
    source = fashion_mnist_file("train", range(0, 5)).limit(images, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        package = train(TrainRequest(cfg=cfg, source=source, out=Path(tmp) / "run",
                                     device="cpu", amp="off", workers=workers))  # fmt: skip
        whole = time.perf_counter() - started
        loop = package.config.training.history[-1]["seconds"]
    return {"images": images, "workers": workers, "call_seconds": whole, "loop_seconds": loop,
            "steps": images // cfg.batch_size}  # fmt: skip


def search_scaling(sizes: list[int], dims: list[int], hnsw_max: int, queries: int) -> list[dict]:
    from search import best_of, random_unit

    from stml_deploy.index import GalleryIndex
    from stml_deploy.neighbours import nearest

    rows = []
    for d in dims:
        q = random_unit(queries, d, 1)
        for n in sizes:
            gallery = random_unit(n, d, 0)
            row = {"gallery": n, "dim": d, "queries": queries}
            for engine in ("faiss", "numpy"):
                row[f"exact_{engine}_seconds"], _ = best_of(
                    lambda g=gallery, e=engine, q=q: nearest(q, g, 10, engine=e)
                )
            if n <= hnsw_max:
                model = {"name": "bench", "weights_sha256": "0" * 64, "package": "-",
                         "embedding_dim": d}  # fmt: skip
                started = time.perf_counter()
                index = GalleryIndex.create(model, gallery, [str(i) for i in range(n)], kind="hnsw")
                row["hnsw_build_seconds"] = time.perf_counter() - started
                row["hnsw_seconds"], _ = best_of(lambda ix=index, q=q: ix.search(q, 10))
            rows.append(row)
            print(json.dumps(row), flush=True)
            del gallery
    return rows


def exported_speed(package: Path, repeats: int) -> list[dict]:
    from exported_variants import export_variants, speed_pixels, speed_table

    with tempfile.TemporaryDirectory() as tmp:
        files = export_variants(package, "fashion-mnist", Path(tmp))
        return speed_table(package, files, speed_pixels(package, "fashion-mnist"), repeats)


def render(report: dict) -> str:
    """The report's tables in Markdown (docs/benchmarks.md "Performance")."""
    out = []
    if "steps" in report:
        out.append("| backbone | N rows | step s | student fwd | teacher fwd | W | losses | backward "
                   "| optimizer | EMA | STML's own % | teacher % | augmentation s |")  # fmt: skip
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in report["steps"]:
            p = r["parts"]
            cells = " | ".join(f"{1e3 * p[name]:.1f}" for name in PARTS)
            out.append(f"| {r['backbone']} @{r['image_size']} | {r['rows']} | {r['step_seconds']:.3f} "
                       f"| {cells} | {100 * r['stml_own_share']:.2f} | {100 * r['teacher_share']:.1f} "
                       f"| {r['augmentation_seconds']:.3f} |")  # fmt: skip
        out.append("\n(part columns in ms)\n")
    if "mining" in report:
        m, e = report["mining"], report["epoch"]
        for engine, table in m["table_seconds"].items():
            mining = m["embed_seconds"] + table
            out.append(f"* mining with {engine}: embed {m['embed_seconds']:.2f} s + neighbour table "
                       f"{table:.2f} s = {mining:.2f} s against the epoch loop's {e['loop_seconds']:.1f} s "
                       f"({e['steps']} steps): {100 * mining / (mining + e['loop_seconds']):.1f}% of the "
                       f"epoch ({m['images']} images)")  # fmt: skip
        out.append("")
    if "search" in report:
        out.append(
            "| gallery | dim | faiss exact ms/query | numpy exact ms/query | HNSW ms/query | HNSW build s |"
        )
        out.append("|---|---|---|---|---|---|")
        for r in report["search"]:
            per = lambda key, r=r: f"{1e3 * r[key] / r['queries']:.3f}" if key in r else "-"  # noqa: E731
            build = f"{r['hnsw_build_seconds']:.1f}" if "hnsw_build_seconds" in r else "-"
            out.append(f"| {r['gallery']:,} | {r['dim']} | {per('exact_faiss_seconds')} "
                       f"| {per('exact_numpy_seconds')} | {per('hnsw_seconds')} | {build} |")  # fmt: skip
        out.append("")
    if "exported" in report:
        out.append("| batch | runtime | ms / batch | images/s | vs torch eager | vs ORT fp32 |")
        out.append("|---|---|---|---|---|---|")
        out += speed_rows(report["exported"])
    return "\n".join(out)


def plot_steps(steps: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for backbone in dict.fromkeys((r["backbone"], r["image_size"]) for r in steps):
        rows = [r for r in steps if (r["backbone"], r["image_size"]) == backbone]
        n = [r["rows"] for r in rows]
        label = f"{backbone[0]} @{backbone[1]} px"
        axes[0].plot(n, [r["step_seconds"] for r in rows], "o-", label=f"{label}: whole step")
        own = [sum(r["parts"][p] for p in STML_OWN) for r in rows]
        axes[0].plot(n, own, "s--", label=f"{label}: STML's own work")
        axes[1].plot(n, [100 * r["stml_own_share"] for r in rows], "o-", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="batch rows N", ylabel="seconds",
                title="training step (CPU)")  # fmt: skip
    axes[1].axhline(3, color="grey", linestyle=":", label="goal: 3%")
    axes[1].set(xscale="log", xlabel="batch rows N", ylabel="% of the step",
                title="STML's own work (W, losses, EMA)")  # fmt: skip
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.minorticks_off()
        ax.set_xticks([120, 240, 480, 960], ["120", "240", "480", "960"])
        ax.legend(fontsize=7)
    save_png(fig, path)


def plot_search(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for d in dict.fromkeys(r["dim"] for r in rows):
        mine = [r for r in rows if r["dim"] == d]
        for key, style in (("exact_faiss", "o-"), ("exact_numpy", "s--"), ("hnsw", "^:")):
            points = [(r["gallery"], 1e3 * r[f"{key}_seconds"] / r["queries"]) for r in mine
                      if f"{key}_seconds" in r]  # fmt: skip
            if points:
                ax.plot(*zip(*points, strict=True), style, label=f"{key.replace('_', ' ')}, {d}-d")
    ax.set(xscale="log", yscale="log", xlabel="gallery vectors", ylabel="ms per query (k = 10)",
           title="search time against gallery size (CPU)")  # fmt: skip
    ax.legend(fontsize=7)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--package", type=Path, default=None, help="also time its exports")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=None, help="folder for the PNG plots")
    parser.add_argument("--parts", default="steps,mining,search,exported", help="what to run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--render", type=Path, default=None, help="print a report's tables")
    args = parser.parse_args()
    if args.render is not None:
        print(render(json.loads(args.render.read_text())))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    repeats = 3 if args.quick else 7
    report: dict = {"command": " ".join(sys.argv), "machine": machine(),
                    "torch_threads": torch.get_num_threads()}  # fmt: skip
    started = time.perf_counter()
    if "steps" in parts:
        report["steps"] = []
        models = [("resnet10t", 32)] if args.quick else [("resnet10t", 32), ("resnet18", 64)]
        for backbone, size in models:
            for rows in (120, 240) if args.quick else (120, 240, 480, 960):
                row = step_breakdown(backbone, size, rows, repeats)
                report["steps"].append(row)
                print(json.dumps(row), flush=True)
    if "mining" in parts:
        images = 1200 if args.quick else 6000
        report["mining"] = mining_cost(images, repeats)
        print(json.dumps(report["mining"]), flush=True)
        report["epoch"] = trainer_epoch(images, workers=0)
        print(json.dumps(report["epoch"]), flush=True)
    if "search" in parts:
        sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
        report["search"] = search_scaling(sizes, [128, 512], 100_000, 100)
    if "exported" in parts and args.package is not None:
        report["exported"] = exported_speed(args.package, 30)
    report["minutes"] = round((time.perf_counter() - started) / 60, 1)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    if args.plots is not None and "steps" in report:
        plot_steps(report["steps"], args.plots / "perf-step.png")
    if args.plots is not None and "search" in report:
        plot_search(report["search"], args.plots / "perf-search.png")
    print(f"\n{render(report)}\n\n{report['minutes']} min")


if __name__ == "__main__":
    main()
