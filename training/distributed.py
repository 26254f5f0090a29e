"""Training on several processes (docs/distributed.md): torchrun starts one process per GPU (or
CPU share) and sets RANK / WORLD_SIZE / LOCAL_RANK; this module joins them into torch's process
group (NCCL on CUDA, gloo on CPU) and holds every collective the trainer uses.

The loss is computed on the GLOBAL batch on every rank, so the result does not depend on the
number of processes. Gradients stay right without any rescaling: the autograd all-gather of
torch.distributed.nn sends each rank the SUM of all ranks' gradients for its rows (world x
the one-process gradient, since every rank holds the same loss), and DDP then AVERAGES the
parameter gradients over the ranks (/ world). Dividing the loss by the world size again, or
gathering without the backward sum, is the known trap (lightly#1977,
pytorch-metric-learning#363); tests/test_distributed.py checks the gradients against one
process on the same batch.

With one process (no torchrun) every function here is the identity, so the trainer has one
code path."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stml_deploy import console
from stml_deploy.errors import StmlError
from training.device import resolve_device

# environment variables that torchrun sets in every process it starts
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_PATIENCE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank among `world`, and the device it computes on."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def _device_of_rank(name: str, local_rank: int) -> torch.device:
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise StmlError(
            f"--device {name}: under torchrun each process takes the GPU of its local rank; "
            "use --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if local_rank >= torch.cuda.device_count():
        raise StmlError(
            f"local rank {local_rank} has no GPU: torch sees {torch.cuda.device_count()} here; "
            "start at most that many processes per node"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def join(device_name: str) -> Ranks:
    """Join the process group torchrun prepared (or stay single when not under torchrun). Ranks
    other than 0 print nothing from here on, except their own error (see `joined`)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Ranks(device=resolve_device(device_name))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = _device_of_rank(device_name, local_rank)
    if not dist.is_initialized():
        # rank 0 alone builds the kNN table and validates while the others wait in a
        # collective: allow that longer than NCCL's 10-minute default before calling it a hang
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device, timeout=_PATIENCE)
        else:
            dist.init_process_group("gloo", timeout=_PATIENCE)
    if rank != 0:  # logs and progress bars from rank 0 only
        console.stderr.quiet = True
        console.stdout.quiet = True
    return Ranks(device, rank, world, local_rank)


@contextlib.contextmanager
def joined(device_name: str) -> Iterator[Ranks]:
    """`join` for the length of a run. The process group is left afterwards if this call
    created it. A rank that fails shows its own message (`join` silenced ranks other than 0);
    torchrun then stops the other ranks and exits with the failed rank's code."""
    created = not dist.is_initialized()
    try:
        ranks = join(device_name)
        yield ranks
    except BaseException:
        console.stderr.quiet = False
        raise
    if created and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(ranks: Ranks) -> torch.device:
    # NCCL moves CUDA tensors only; gloo CPU tensors
    return ranks.device if ranks.device.type == "cuda" else torch.device("cpu")


# --- the global batch -----------------------------------------------------------------------
def global_rows(local: torch.Tensor, ranks: Ranks, views: int, with_grad: bool) -> torch.Tensor:
    """The rows of every rank's batch slice, in the order one process would hold them.

    Each rank holds `views` blocks of its images ([v0 of its slice, v1 of its slice, ...],
    collate_views' layout); one process holds [v0 of all images, v1 of all images, ...]. The
    gathered [world, views, b] blocks are transposed to [views, world, b]. Any per-row tensor
    (pixels' embeddings, image ids, labels) goes through here the same way.
    `with_grad`: gradients flow back to the rank that computed each row (see the module note)."""
    if not ranks.distributed:
        return local
    if with_grad:
        stacked = _all_gather_with_grad(local.contiguous())
    else:
        parts = [torch.empty_like(local) for _ in range(ranks.world)]
        dist.all_gather(parts, local.contiguous())
        stacked = torch.cat(parts)  # [world * views * b, ...], rank by rank
    b = local.shape[0] // views
    blocks = stacked.reshape(ranks.world, views, b, *local.shape[1:]).transpose(0, 1)
    return blocks.reshape(ranks.world * views * b, *local.shape[1:])


def _all_gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """All ranks' `local`, concatenated, with a backward that sums each rank's gradient for
    every rank's rows and returns it to the owner (reduce-scatter; gloo: all-to-all + sum)."""
    try:  # what torch 2.14 recommends (torch.distributed.nn.functional.all_gather is deprecated)
        from torch.distributed._functional_collectives import all_gather_single
    except ImportError:  # older torch: the same gradient through torch.distributed.nn
        import torch.distributed.nn.functional as dist_nn

        return torch.cat(dist_nn.all_gather(local))
    return all_gather_single(local, 0, dist.group.WORLD)


# --- arrays (mining, plans) -----------------------------------------------------------------
def gather_arrays(local: np.ndarray, ranks: Ranks, main_only: bool = False) -> np.ndarray:
    """Concatenate every rank's rows in rank order; ranks may hold different row counts
    (shards of the train set, minus unreadable images). `main_only`: only rank 0 receives
    them (the others get no rows), so the train set's embeddings are not held world times."""
    if not ranks.distributed:
        return local
    device = _comm_device(ranks)
    count = torch.tensor([len(local)], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(ranks.world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=torch.from_numpy(local).dtype)
    padded[: len(local)] = torch.from_numpy(local)
    padded = padded.to(device)
    if main_only:
        parts = [torch.empty_like(padded) for _ in range(ranks.world)] if ranks.is_main else None
        dist.gather(padded, parts, dst=0)
        if not ranks.is_main:
            return local[:0]
    else:
        parts = [torch.empty_like(padded) for _ in range(ranks.world)]
        dist.all_gather(parts, padded)
    return np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, sizes, strict=True)])


def from_main(array: np.ndarray, ranks: Ranks) -> np.ndarray:
    """Rank 0's `array` on every rank (same shape and dtype on all ranks)."""
    if not ranks.distributed:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_comm_device(ranks))
    dist.broadcast(tensor, src=0)
    return tensor.cpu().numpy()


def shard(count: int, ranks: Ranks) -> np.ndarray:
    """This rank's contiguous share of `count` items (gathered back in rank order)."""
    return np.array_split(np.arange(count, dtype=np.int64), ranks.world)[ranks.rank]


# --- networks -------------------------------------------------------------------------------
@torch.no_grad()
def buffers_from_main(module: nn.Module, ranks: Ranks) -> None:
    """Rank 0's floating buffers on every rank: the EMA teacher's BatchNorm statistics. DDP
    syncs the student's buffers only at the start of each forward, so after a step each
    rank's student (and the EMA of it) holds its own batch's statistics. Parameters need
    nothing: DDP's averaged gradients keep them identical."""
    floating = [b for b in module.buffers() if b.dtype.is_floating_point]
    if not ranks.distributed or not floating:
        return
    # one message, not one per BatchNorm layer
    flat = torch.cat([b.detach().reshape(-1).to(torch.float32) for b in floating])
    dist.broadcast(flat, src=0)
    for buffer, part in zip(floating, flat.split([b.numel() for b in floating]), strict=True):
        buffer.copy_(part.view_as(buffer))


@torch.no_grad()
def disagreement(module: nn.Module, ranks: Ranks) -> float:
    """The largest difference between any rank's parameters and buffers and rank 0's (0.0:
    identical). One fingerprint per tensor travels, not the weights."""
    if not ranks.distributed:
        return 0.0
    tensors = [*module.parameters(), *module.buffers()]
    mine = torch.stack([t.detach().double().sum() for t in tensors] + [
        t.detach().double().abs().sum() for t in tensors
    ]).to(_comm_device(ranks))  # fmt: skip
    theirs = [torch.empty_like(mine) for _ in range(ranks.world)]
    dist.all_gather(theirs, mine)
    return max(float((t - theirs[0]).abs().max()) for t in theirs)


def wrap_student(student: nn.Module, ranks: Ranks, sync_bn: bool) -> nn.Module:
    """The module the training step calls: DDP around the student when distributed (its
    construction broadcasts rank 0's weights, so every rank starts from the same model)."""
    if sync_bn:
        if ranks.device.type != "cuda":
            raise StmlError(
                "--sync-bn needs CUDA: torch's SyncBatchNorm does not run on CPU tensors"
            )
        if ranks.distributed:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    if not ranks.distributed:
        return student
    from torch.nn.parallel import DistributedDataParallel

    ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return DistributedDataParallel(student, device_ids=ids)


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
