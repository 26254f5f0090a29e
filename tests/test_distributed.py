"""DDP on the CPU (gloo, 2 processes): the global-batch step gives one process's gradients, the
EMA teacher stays identical across ranks, and `train(..., nproc=2)` (torch's launcher) gives the
single-process model, package and Recall@1 within stated tolerances, and resumes.

Tolerances (measured on this 2-core machine, docs/benchmarks.md "Distributed training"):
* gradients of one step: float32 rounding of a different summation order, |diff| <= 1e-5 x max;
* weights after 2 epochs (test_vit, no BatchNorm): max |diff| <= 0.02 where the weights are O(1);
  AdamP normalises each update, so rounding-level gradient differences move a weight by up to
  about lr per step where its gradient is near zero (measured: 2.5e-3 to 5.6e-3 at lr 3e-3);
* Recall@1 with a BatchNorm backbone (per-rank statistics): within 0.05 of one process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TINY = dict(
    pretrained=False, image_size=32, resize=32, embedding_dim=16, aux_dim=32, batch_size=40,
    neighbours=4, lr=3e-3, momentum=0.9,
)  # fmt: skip
IMAGES = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trainer(backbone: str, ranks):  # a Trainer ready for _step, no data loaded
    from training.config import TrainConfig
    from training.distributed import wrap_student
    from training.model import make_teacher
    from training.named_datasets import resolve_source
    from training.package_io import build_student
    from training.trainer import Trainer, TrainRequest, _optimizer

    cfg = TrainConfig(backbone=backbone, **TINY)
    trainer = Trainer(
        TrainRequest(cfg, resolve_source("digits", None, "train"), Path("unused")), ranks
    )
    torch.manual_seed(0)
    student, trainer.spec = build_student(cfg)
    teacher = make_teacher(student)
    trainer.model = wrap_student(student, ranks, sync_bn=False)
    optimizer = _optimizer(student, cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return trainer, student, teacher, optimizer, scaler


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch in collate_views' layout: [view 0 of 40 images, view 1 of them], 4 neighbours
    per query image (ids repeat within a group, as the sampler makes them)."""
    gen = torch.Generator().manual_seed(step)
    pixels = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8, generator=gen)
    ids = torch.randperm(200, generator=gen)[:40].repeat(2)
    return pixels, ids


def _slice(pixels: torch.Tensor, ids: torch.Tensor, rank: int, world: int):
    b = len(ids) // 2 // world
    rows = torch.cat([torch.arange(v * 40 + rank * b, v * 40 + (rank + 1) * b) for v in (0, 1)])
    return pixels[rows], ids[rows]


def _steps(backbone: str, ranks, steps: int):
    trainer, student, teacher, optimizer, scaler = _trainer(backbone, ranks)
    student.train()
    grads, losses = [], []
    for step in range(steps):
        pixels, ids = _slice(*_global_batch(step), ranks.rank, ranks.world)
        losses.append(trainer._step(student, teacher, optimizer, scaler, pixels, ids)["total"])
        grads.append({n: p.grad.clone() for n, p in student.named_parameters()})
    return student, teacher, grads, losses


def _rank(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: steps of the trainer on slices of fixed global batches, then
    real runs of `train` as a rank (what torchrun would start)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    from training.distributed import disagreement, joined

    with joined("cpu") as ranks:
        _, teacher, grads, losses = _steps("test_vit", ranks, 2)
        # a BatchNorm backbone: per-rank batch statistics, teacher kept identical
        bn_student, bn_teacher, _, _ = _steps("test_resnet", ranks, 3)
        found = {
            "teacher": disagreement(teacher, ranks),
            "bn_teacher": disagreement(bn_teacher, ranks),
            "bn_student_buffers": disagreement(bn_student, ranks),
        }
        with torch.no_grad():  # the check itself must see a difference on one rank
            next(bn_teacher.parameters()).view(-1)[0] += 1e-3 * ranks.rank
        found["perturbed"] = disagreement(bn_teacher, ranks)
        torch.save({"grads": grads, "losses": losses, "found": found}, f"{out}/rank{rank}.pt")
        _train(Path(out) / "bn", "test_resnet", epochs=2)
        _train(Path(out) / "vit", "test_vit", epochs=2, stop_after=1)  # resumed by a test


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(_free_port(), str(out)), nprocs=2, join=True)
    return out


def _results(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_global_batch_gradients_equal_one_process(two_ranks: Path) -> None:
    from training.distributed import Ranks

    torch.set_num_threads(1)
    _, _, grads, losses = _steps("test_vit", Ranks(torch.device("cpu")), 2)
    for got in _results(two_ranks):
        assert got["losses"] == pytest.approx(losses, rel=1e-5)
        # step 1: the same weights, so the same gradients up to summation order (a world-size
        # factor, the known trap, would be off by 2x); step 2 starts from weights that AdamP
        # moved by rounding-level differences, hence the looser bound. Judged against the
        # step's largest gradient: a parameter whose gradient is ~1e-9 has no digits to compare
        for step, rel in ((0, 1e-5), (1, 1e-3)):
            scale = max(g.abs().max().item() for g in grads[step].values())
            for name, expected in grads[step].items():
                diff = (got["grads"][step][name] - expected).abs().max().item()
                assert diff <= rel * scale, (step, name, diff, scale)


def test_teacher_identical_across_ranks(two_ranks: Path) -> None:
    for got in _results(two_ranks):
        assert got["found"]["teacher"] == 0.0
        assert got["found"]["bn_teacher"] == 0.0  # BatchNorm statistics broadcast from rank 0
        assert got["found"]["perturbed"] > 0.0  # and the check does see a difference
        # why the broadcast is needed: each rank's student holds its own batch's statistics
        assert got["found"]["bn_student_buffers"] > 0.0


def test_rank_slices_make_the_global_batch() -> None:
    from stml_deploy.errors import StmlError
    from training.sampler import NeighbourBatchSampler, RankSlice, nearest_neighbour_table

    table = nearest_neighbour_table(np.random.default_rng(0).normal(size=(100, 8)), 4)
    plan = NeighbourBatchSampler(table, 40, seed=3)
    plan.set_epoch(1)
    slices = [list(RankSlice(plan, rank, 2)) for rank in (0, 1)]
    assert [a + b for a, b in zip(*slices, strict=True)] == list(plan)
    with pytest.raises(StmlError, match="does not split evenly over 3"):
        RankSlice(plan, 0, 3)


# --- end to end through torch's launcher ------------------------------------------------------
def _train(out: Path, backbone: str, **options):
    from training.api import train

    return train("digits", out, max_images=IMAGES, workers=0, backbone=backbone, **TINY, **options)


def test_launcher_resumes_a_two_process_run_matching_one_process(
    two_ranks: Path, tmp_path: Path
) -> None:
    from stml_deploy.package import ModelPackage

    torch.set_num_threads(1)
    one = _train(tmp_path / "one", "test_vit", epochs=2)
    stopped = ModelPackage.load(two_ranks / "vit")  # two ranks, stopped after epoch 1
    assert stopped.config.training.epochs_done == 1
    # resumed on two processes started by torch's launcher (what `stml train --nproc 2` runs)
    two = _train(two_ranks / "vit", "test_vit", epochs=2, resume=True, nproc=2)
    a, b = load_file(one.path("model.safetensors")), load_file(two.path("model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 0.02, worst
    # the same package: file list, config fields, history entries
    assert sorted(p.name for p in one.root.iterdir()) == sorted(p.name for p in two.root.iterdir())
    ca, cb = one.config.to_json(), two.config.to_json()
    assert ca.keys() == cb.keys()
    assert ca["training"]["hyperparameters"] == cb["training"]["hyperparameters"]
    assert [e.keys() for e in ca["training"]["history"]] == [
        e.keys() for e in cb["training"]["history"]
    ]
    assert cb["training"]["epochs_done"] == 2 and cb["training"]["complete"]
    for x, y in zip(ca["training"]["history"], cb["training"]["history"], strict=True):
        assert x["total"] == pytest.approx(y["total"], rel=1e-3)


def test_batchnorm_backbone_recall_close_to_one_process(two_ranks: Path, tmp_path: Path) -> None:
    from training.evaluation_run import evaluate_package
    from training.named_datasets import resolve_source

    torch.set_num_threads(1)
    one = _train(tmp_path / "one", "test_resnet", epochs=2)
    test = resolve_source("digits", None, "test").limit(300, seed=0)
    r1 = [
        evaluate_package(str(p), test, "cpu", 256, 0, False)["recall_at_1"]
        for p in (one.root, two_ranks / "bn")
    ]
    assert abs(r1[0] - r1[1]) <= 0.05, r1


def test_launcher_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from stml_deploy.errors import StmlError
    from training.launch import Launch, threads_per_rank

    with pytest.raises(StmlError, match="needs --rdzv-endpoint"):
        Launch(nproc=2, nnodes=2).check()
    with pytest.raises(StmlError, match="--node-rank must be in"):
        Launch(nproc=2, nnodes=2, node_rank=2, rdzv_endpoint="host:29400").check()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(StmlError, match="already running under torchrun"):
        Launch(nproc=2).check()
    assert threads_per_rank(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert threads_per_rank(10_000) == 1


def test_sync_bn_is_refused_on_cpu(tmp_path: Path) -> None:
    from stml_deploy.errors import StmlError

    with pytest.raises(StmlError, match="--sync-bn needs CUDA"):
        _train(tmp_path / "pkg", "test_resnet", epochs=1, sync_bn=True, device="cpu")


# --- GPU paths (not run here: no GPU on the development machines) -----------------------------
@pytest.mark.gpu
def test_compile_amp_channels_last_on_one_gpu(tmp_path: Path) -> None:  # pragma: no cover
    package = _train(
        tmp_path / "pkg", "test_resnet", epochs=1, device="cuda", amp="auto", compile=True
    )
    assert package.config.training.amp in ("bfloat16", "float16")


@pytest.mark.gpu
def test_nccl_two_gpus_match_one_gpu_and_sync_bn(tmp_path: Path) -> None:  # pragma: no cover
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs for NCCL (NCCL refuses two ranks on one GPU)")
    one = _train(tmp_path / "one", "test_vit", epochs=2, device="cuda", amp="off")
    two = _train(tmp_path / "two", "test_vit", epochs=2, device="cuda", amp="off", nproc=2)
    a, b = load_file(one.path("model.safetensors")), load_file(two.path("model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 0.02
    # the AMP, pinned-memory and SyncBatchNorm paths under NCCL
    synced = _train(tmp_path / "bn", "test_resnet", epochs=1, device="cuda", nproc=2, sync_bn=True)
    assert synced.config.training.epochs_done == 1


def test_semi_supervised_labels_travel_with_the_ids_across_ranks(tmp_path: Path) -> None:
    """A few labels and two processes: each rank looks up its rows' labels and the labels are
    gathered with the ids, so W's ground truth and the supervised loss see the global batch
    exactly as one process does."""
    torch.set_num_threads(1)
    semi = dict(epochs=1, labeled_fraction=0.3, labeled_ratio=0.5)
    one = _train(tmp_path / "one", "test_vit", **semi)
    two = _train(tmp_path / "two", "test_vit", nproc=2, **semi)
    a, b = load_file(one.path("model.safetensors")), load_file(two.path("model.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 0.02, worst
    (x,), (y,) = one.config.training.history, two.config.training.history
    assert x["supervised"] > 0 and x["supervised"] == pytest.approx(y["supervised"], rel=1e-3)
    assert x["total"] == pytest.approx(y["total"], rel=1e-3)
    assert one.config.training.supervision == two.config.training.supervision
