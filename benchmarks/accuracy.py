"""Benchmark: STML against the alternatives a user would pick, on three Fashion-MNIST protocols
(issue 11). `make bench-accuracy` runs the full benchmark; `--quick` a small subset.

    PYTHONPATH=. .venv/bin/python benchmarks/accuracy.py [--quick] [--semi]
        [--eval-on test|val] [--seeds 0,1] [--json docs/accuracy.json] [--plot docs/accuracy.png]

Protocols (train file = Fashion-MNIST's 60k training file, t10k = its 10k test file):
  a  unseen classes, from scratch: no labels, train-file classes 0-4 -> t10k classes 5-9;
  b  in-domain, from scratch: no labels, train-file classes 0-9 -> all of t10k;
  c  pretrained elsewhere, adapted without labels: supervised MultiSimilarity on train-file
     classes 0-4 (the "Hub model"), then adapted on the train-file images of classes 5-9
     without their labels -> t10k classes 5-9.
Methods, all on the same network (the cpu-small recipe: timm resnet10t at 32 px, 128-d f,
512-d g, batch 120 images x 2 views), the same number of optimizer steps, augmentations,
optimizer and schedule:
  start       the network before training (random init in a, b; the pretrained one in c);
  stml        STML, no labels;
  simclr      SelfSupervisedLoss(NTXentLoss) on two views (pytorch-metric-learning);
  supervised  MultiSimilarityLoss with every training image's label (the bound);
  semi        (--semi) STML with --semi-fraction of the labels (class-stratified).
Training subsets are fixed (seed 0); each method's seed sets its init, sampling and
augmentation. --eval-on val replaces t10k with a validation split carved from the train file
(images of the protocol's retrieval classes that no run trains on): tune there, never on t10k."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from methods import METRICS, measure, train_simclr, train_stml, train_supervised

from stml_deploy.atomic import atomic_write_text
from stml_deploy.config import DataRecord, TrainingRecord
from training.config import TrainConfig
from training.demo import demo_config
from training.model import EmbeddingNet
from training.named_datasets import fashion_mnist_available, fashion_mnist_file
from training.package_io import architecture_of, build_student, write_package
from training.semi_supervised import attach_labels
from training.sources import ImageSource

METHODS = ("start", "stml", "simclr", "supervised")
SEMI_METHODS = ("semi",)
# where the shorter protocol name is used (tables, plots, JSON)
TITLES = {
    "a": "(a) unseen classes, from scratch",
    "b": "(b) in-domain, from scratch",
    "c": "(c) pretrained on 0-4, adapted on 5-9",
}


@dataclass(frozen=True)
class Sizes:
    train: int  # training images (a, b) / adaptation images (c)
    pretrain: int  # labelled images of classes 0-4 for (c)'s pretraining
    test: int  # retrieval images per protocol (t10k, or the validation split)
    in_domain_train: int  # (b) trains on all ten classes: more images
    epochs: int


FULL = Sizes(train=6000, pretrain=6000, test=10000, in_domain_train=10000, epochs=5)
QUICK = Sizes(train=1200, pretrain=1200, test=2000, in_domain_train=1800, epochs=3)


@dataclass
class Protocol:
    key: str
    train: ImageSource
    evaluation: ImageSource
    pretrain: ImageSource | None = None


def _train_file_subsets(classes: range, *sizes: int) -> list[ImageSource]:
    """Disjoint seeded subsets of the train-file images of `classes`, of the given sizes."""
    source = fashion_mnist_file("train", classes)
    order = np.random.default_rng(0).permutation(len(source))
    ends = np.cumsum(sizes)
    if ends[-1] > len(source):
        raise SystemExit(f"error: {source.name} has {len(source)} images, not {ends[-1]}")
    return [
        source.subset(np.sort(order[end - size : end]))
        for size, end in zip(sizes, ends, strict=True)
    ]


def build_protocols(sizes: Sizes, eval_on: str, wanted: list[str]) -> list[Protocol]:
    """The protocols' data. Validation images are train-file images no run trains on, of the
    classes the protocol retrieves among."""

    def evaluation(classes: range, validation: ImageSource) -> ImageSource:
        if eval_on == "val":
            return validation
        return fashion_mnist_file("t10k", classes).limit(sizes.test, seed=0)

    protocols = []
    if "a" in wanted:
        (train,) = _train_file_subsets(range(0, 5), sizes.train)
        (val,) = _train_file_subsets(range(5, 10), sizes.test)
        protocols.append(Protocol("a", train, evaluation(range(5, 10), val)))
    if "b" in wanted:
        train, val = _train_file_subsets(range(0, 10), sizes.in_domain_train, sizes.test)
        protocols.append(Protocol("b", train, evaluation(range(0, 10), val)))
    if "c" in wanted:
        (pretrain_data,) = _train_file_subsets(range(0, 5), sizes.pretrain)
        adapt, val = _train_file_subsets(range(5, 10), sizes.train, sizes.test)
        protocols.append(Protocol("c", adapt, evaluation(range(5, 10), val), pretrain_data))
    for protocol in protocols:
        protocol.train.name = f"{protocol.train.name} ({len(protocol.train)} images)"
    return protocols


def steps_of(cfg: TrainConfig, images: int) -> int:
    """The trainer's optimizer steps: whole batches per epoch, times the epochs."""
    return cfg.epochs * (images // cfg.batch_size)


def pretrain(cfg: TrainConfig, protocol: Protocol, folder: Path) -> tuple[EmbeddingNet, Path]:
    """(c)'s starting model: MultiSimilarity with labels on classes 0-4, written as a package
    (STML starts from it through --init-from, as a user's Hub model would)."""
    source = protocol.pretrain
    assert source is not None and source.labels is not None
    network, spec = train_supervised(cfg, source, source.labels, steps_of(cfg, len(source)))
    record = TrainingRecord(
        hyperparameters=cfg.to_dict(), data=DataRecord.from_json(source.summary()),
        epochs_done=cfg.epochs, complete=True, method="MultiSimilarityLoss, supervised",
        device="cpu", amp="off",
    )  # fmt: skip
    write_package(folder, network, architecture_of(cfg, network), spec, "pretrained", record)
    return network, folder


def run_method(
    method: str,
    cfg: TrainConfig,
    protocol: Protocol,
    start: EmbeddingNet | None,
    start_package: Path | None,
    args: argparse.Namespace,
    work: Path,
) -> tuple[EmbeddingNet, object]:
    data = protocol.train
    steps = steps_of(cfg, len(data))
    if method == "start":
        torch.manual_seed(cfg.seed)
        network, spec = build_student(cfg)
        if start is not None:
            network.load_state_dict(start.state_dict())
        return network.eval(), spec
    if method == "stml":
        return train_stml(cfg, data, work / "stml", init_from=start_package)
    if method == "semi":
        _, labelled = attach_labels(data, None, args.semi_fraction, cfg.seed)
        return train_stml(cfg, data, work / "semi", labelled, init_from=start_package)
    if method == "simclr":
        return train_simclr(cfg, data, steps, args.temperature, start)
    if method == "supervised":
        assert data.labels is not None
        return train_supervised(cfg, data, data.labels, steps, start)
    raise ValueError(method)


def summarize(results: list[dict]) -> list[dict]:
    """Mean and spread (sample standard deviation; 0 for one seed) per protocol and method."""
    rows = []
    for protocol in dict.fromkeys(r["protocol"] for r in results):
        for method in dict.fromkeys(r["method"] for r in results):
            runs = [r for r in results if r["protocol"] == protocol and r["method"] == method]
            if not runs:
                continue
            row: dict = {"protocol": protocol, "method": method, "seeds": len(runs)}
            for key in (*METRICS, "train_seconds"):
                values = [r[key] for r in runs]
                row[key] = statistics.mean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def goals(summary: list[dict]) -> list[dict]:
    """The issue's goals, judged on mean Recall@1."""
    r1 = {(r["protocol"], r["method"]): r["recall_at_1"] for r in summary}
    out = []
    for protocol in dict.fromkeys(r["protocol"] for r in summary):
        stml = r1.get((protocol, "stml"))
        if stml is None:
            continue
        for rival in ("start", "simclr"):
            if (protocol, rival) in r1:
                out.append({"protocol": protocol, "goal": f"stml beats {rival} at Recall@1",
                            "value": stml - r1[(protocol, rival)],
                            "met": stml > r1[(protocol, rival)]})  # fmt: skip
        start, bound = r1.get((protocol, "start")), r1.get((protocol, "supervised"))
        if protocol == "b" and start is not None and bound is not None and bound > start:
            closed = (stml - start) / (bound - start)
            out.append({"protocol": protocol, "goal": "stml closes >= half the gap start -> "
                        "supervised", "value": closed, "met": closed >= 0.5})  # fmt: skip
        if protocol == "c" and start is not None:
            out.append({"protocol": protocol, "goal": "stml beats the zero-shot model by >= 2 "
                        "points", "value": stml - start, "met": stml - start >= 0.02})  # fmt: skip
    return out


def table(summary: list[dict]) -> str:
    head = "| protocol | method | Recall@1 | @2 | @4 | @8 | MAP@R | NMI | train s |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        cells = [f"{r[k]:.4f} ± {r[f'{k}_std']:.4f}" if k == "recall_at_1" else f"{r[k]:.4f}"
                 for k in METRICS]  # fmt: skip
        lines.append(f"| {TITLES[r['protocol']]} | {r['method']} | " + " | ".join(cells)
                     + f" | {r['train_seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(r["protocol"] for r in summary))
    methods = list(dict.fromkeys(r["method"] for r in summary))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        rows = {r["protocol"]: r for r in summary if r["method"] == method}
        xs = [p + (m - (len(methods) - 1) / 2) * width for p in range(len(protocols))]
        means = [rows[p]["recall_at_1"] if p in rows else np.nan for p in protocols]
        spreads = [rows[p]["recall_at_1_std"] if p in rows else 0.0 for p in protocols]
        ax.bar(xs, means, width, yerr=spreads, capsize=3, label=method)
    ax.set_xticks(range(len(protocols)), [TITLES[p] for p in protocols], fontsize=8)
    finite = [r["recall_at_1"] for r in summary]
    ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
    ax.set_ylabel("Recall@1 (mean ± sd over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=len(methods))
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """A matplotlib figure as PNG, replaced atomically."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)


def machine() -> dict:
    from export.report import cpu_name

    info = Path("/proc/cpuinfo")
    flags = info.read_text() if info.exists() else ""
    return {"cpu": cpu_name(), "cores": torch.get_num_threads(), "avx512_vnni": "avx512_vnni" in flags,
            "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip


def config_overrides(items: list[str]) -> dict:
    """--set FIELD=VALUE pairs, each value of its TrainConfig field's type."""
    defaults = demo_config(1).to_dict()
    out = {}
    for item in items:
        field, _, value = item.partition("=")
        if field not in defaults or not value:
            raise SystemExit(f"error: --set {item}: not FIELD=VALUE of a TrainConfig field")
        kind = type(defaults[field])
        out[field] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the ~10-minute subset")
    parser.add_argument("--semi", action="store_true", help="add semi-supervised STML")
    parser.add_argument("--semi-fraction", type=float, default=0.1)
    parser.add_argument("--protocols", default="a,b,c")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=None, help="default: 5 (3 with --quick)")
    parser.add_argument("--images", type=int, default=None, help="training images, each protocol")
    parser.add_argument("--test-images", type=int, default=None, help="retrieval images")
    parser.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature")
    parser.add_argument("--lr", type=float, default=None, help="all methods (default: recipe)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field for every method (repeatable)")  # fmt: skip
    parser.add_argument("--eval-on", choices=("test", "val"), default="test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    if not fashion_mnist_available():
        sys.exit(
            "error: the benchmark needs Fashion-MNIST (make data: Debian's dataset-fashion-mnist)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    if args.epochs is not None:
        sizes = replace(sizes, epochs=args.epochs)
    if args.images is not None:
        sizes = replace(sizes, train=args.images, pretrain=args.images, in_domain_train=args.images)
    if args.test_images is not None:
        sizes = replace(sizes, test=args.test_images)
    methods = args.methods.split(",") + (list(SEMI_METHODS) if args.semi else [])
    seeds = [int(s) for s in args.seeds.split(",")]
    protocols = build_protocols(sizes, args.eval_on, args.protocols.split(","))
    overrides = {"lr": args.lr, "head_lr": args.lr} if args.lr is not None else {}
    overrides |= config_overrides(args.set)
    results: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for protocol in protocols:
            for seed in seeds:
                cfg = replace(demo_config(sizes.epochs), seed=seed, **overrides)
                start = start_package = None
                pretrain_seconds = 0.0
                if protocol.pretrain is not None:
                    t0 = time.perf_counter()
                    start, start_package = pretrain(cfg, protocol, work / "pretrained")
                    pretrain_seconds = time.perf_counter() - t0
                for method in methods:
                    t0 = time.perf_counter()
                    network, spec = run_method(
                        method, cfg, protocol, start, start_package, args, work
                    )
                    seconds = time.perf_counter() - t0
                    row = {"protocol": protocol.key, "method": method, "seed": seed,
                           **measure(network, spec, protocol.evaluation),
                           "train_seconds": round(seconds, 1),
                           "pretrain_seconds": round(pretrain_seconds, 1)}  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
    minutes = (time.perf_counter() - started) / 60
    summary = summarize(results)
    verdicts = goals(summary)
    described = (
        f"{'quick' if args.quick else 'full'} run, retrieval on {args.eval_on}; "
        f"{sizes.epochs} epochs; seeds {args.seeds}; {minutes:.1f} min"
    )
    print(f"\n{described}\n\n{table(summary)}\n")
    for goal in verdicts:
        print(f"({goal['protocol']}) {goal['goal']}: {goal['value']:+.4f} "
              f"{'met' if goal['met'] else 'MISSED'}")  # fmt: skip
    report = {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "minutes": round(minutes, 1),
        "settings": {"sizes": sizes.__dict__, "eval_on": args.eval_on,
                     "seeds": seeds, "temperature": args.temperature, "lr": args.lr, "set": args.set,
                     "semi_fraction": args.semi_fraction if args.semi else None,
                     "config": demo_config(sizes.epochs).to_dict(),
                     "data": {p.key: {"train": len(p.train), "retrieval": len(p.evaluation),
                                      "pretrain": len(p.pretrain) if p.pretrain else 0}
                              for p in protocols}},
        "results": results,
        "summary": summary,
        "goals": verdicts,
    }  # fmt: skip
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    if args.plot is not None:
        plot(summary, args.plot, f"Fashion-MNIST, {described}")


if __name__ == "__main__":
    main()
