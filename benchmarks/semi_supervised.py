"""Benchmark: semi-supervised STML against supervised-only and unsupervised STML on Fashion-MNIST
(issue 12), CPU-sized.

    .venv/bin/python benchmarks/semi_supervised.py [--train-images 1500] [--test-images 2000]
        [--epochs 4] [--fractions 0.01,0.1] [--seeds 0,1] [--json results.json]

Protocols: (a) unseen classes: train on classes 0-4 of the training file, retrieve among the
t10k images of classes 5-9; (b) in-domain: train on all 10 classes, retrieve among all of t10k.
A seeded random subset of each (--train-images, --test-images). Methods, all from the same
random-init backbone (the demo's setting: timm resnet10t, 32 px, 128-d f, 512-d g):
  unsupervised  STML, labels never used;
  semi          STML with --labeled-fraction F (class-stratified, seeded) of the train subset;
  supervised    MultiSimilarity (pytorch-metric-learning) on the same labelled images only,
                same batch size and number of optimizer steps, same augmentations and optimizer.
Prints one table row per (protocol, fraction, method): mean and per-seed Recall@1 and MAP@R."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from methods import measure, train_stml, train_supervised

from training.config import TrainConfig
from training.demo import demo_config
from training.named_datasets import fashion_mnist_file
from training.semi_supervised import attach_labels

PROTOCOLS = {
    "a (unseen classes 5-9)": (range(0, 5), range(5, 10)),
    "b (in-domain, all 10)": (range(0, 10), range(0, 10)),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-images", type=int, default=1500)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--fractions", default="0.01,0.1")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--protocols", default="a,b")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--labeled-ratio", type=float, default=TrainConfig.labeled_ratio)
    parser.add_argument("--supervised-weight", type=float, default=TrainConfig.supervised_weight)
    parser.add_argument("--methods", default="unsupervised,semi,supervised")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fractions = [float(x) for x in args.fractions.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    results: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (train_classes, test_classes) in PROTOCOLS.items():
            if name[0] not in args.protocols.split(","):
                continue
            test = fashion_mnist_file("t10k", test_classes).limit(args.test_images, seed=0)
            for seed in seeds:
                cfg = replace(
                    demo_config(args.epochs), batch_size=args.batch_size, seed=seed,
                    backbone=args.backbone, labeled_ratio=args.labeled_ratio,
                    supervised_weight=args.supervised_weight,
                )  # fmt: skip
                data = fashion_mnist_file("train", train_classes).limit(
                    args.train_images, seed=seed
                )
                steps = args.epochs * (len(data) // cfg.batch_size)
                runs = [("unsupervised", None, None)]
                for fraction in fractions:
                    _, labelled = attach_labels(data, None, fraction, seed)
                    runs += [("semi", fraction, labelled), ("supervised", fraction, labelled)]
                for method, fraction, labelled in runs:
                    if method not in args.methods.split(","):
                        continue
                    t0 = time.perf_counter()
                    if method == "supervised":
                        student, spec = train_supervised(cfg, data, labelled.labels, steps)
                    else:
                        student, spec = train_stml(cfg, data, Path(tmp) / "run", labelled)
                    row = {
                        "protocol": name, "method": method, "fraction": fraction, "seed": seed,
                        "labelled": labelled.record.labelled_images if labelled else 0,
                        **{k: v for k, v in measure(student, spec, test).items() if k in ("recall_at_1", "map_at_r")},
                        "seconds": round(time.perf_counter() - t0, 1),
                    }  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
    total = time.perf_counter() - started
    print(f"\ntotal {total / 60:.1f} min; train {args.train_images} images, test {args.test_images}, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.backbone}\n")  # fmt: skip
    print_table(results, fractions)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "minutes": total / 60, "results": results}, indent=1))  # fmt: skip


def print_table(results: list[dict], fractions: list[float]) -> None:
    print("| protocol | labels | method | Recall@1 (mean; per seed) | MAP@R (mean; per seed) |")
    print("|---|---|---|---|---|")
    for protocol in dict.fromkeys(r["protocol"] for r in results):
        for fraction in fractions:
            for method in ("unsupervised", "supervised", "semi"):
                rows = [r for r in results if r["protocol"] == protocol and r["method"] == method
                        and (method == "unsupervised" or r["fraction"] == fraction)]  # fmt: skip
                if not rows:
                    continue
                cells = []
                for key in ("recall_at_1", "map_at_r"):
                    values = [r[key] for r in rows]
                    each = ", ".join(f"{v:.4f}" for v in values)
                    cells.append(f"**{statistics.mean(values):.4f}**; {each}")
                labels = (
                    f"{fraction:g} ({rows[0]['labelled']})" if method != "unsupervised" else "none"
                )
                print(f"| {protocol} | {labels} | {method} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
