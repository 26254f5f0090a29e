"""`stml train --nproc N` (and `train(..., nproc=N)`): start N training processes per node
through torch's own launcher (torch.distributed.run's parser and configuration, run by
elastic_launch: the machinery behind `torchrun`), each running `entry(*args)` as one rank."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stml_deploy.errors import Interrupted, StmlError
from training.distributed import launched_by_torchrun


@dataclass(frozen=True)
class Launch:
    """torchrun's options that stml passes through (docs/distributed.md)."""

    nproc: int = 1  # processes on this node (one per GPU)
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port of the rendezvous (multi-node)
    rdzv_backend: str | None = None  # torchrun's default (static) when not given

    @property
    def wanted(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1

    def check(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise StmlError("--nproc and --nnodes must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise StmlError(f"--node-rank must be in [0, {self.nnodes}) (got {self.node_rank})")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise StmlError(
                "--nnodes > 1 needs --rdzv-endpoint host:port (reachable by every node)"
            )
        if launched_by_torchrun():
            raise StmlError(
                "already running under torchrun: leave out --nproc/--nnodes (torchrun starts the processes)"
            )


def threads_per_rank(nproc: int) -> int:
    """CPU cores / processes, so the ranks of a node do not oversubscribe it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // nproc)


def _torchrun_config(launch: Launch) -> Any:
    from torch.distributed import run as torchrun

    flags = ["--nproc-per-node", str(launch.nproc), "--nnodes", str(launch.nnodes),
             "--node-rank", str(launch.node_rank)]  # fmt: skip
    if launch.rdzv_endpoint:
        flags += ["--rdzv-endpoint", launch.rdzv_endpoint]
    if launch.rdzv_backend:
        flags += ["--rdzv-backend", launch.rdzv_backend]
    args = torchrun.get_args_parser().parse_args([*flags, "stml"])  # "stml": the unused script
    if launch.nnodes == 1 and not launch.rdzv_endpoint:
        # torchrun --standalone: a rendezvous on a free local port (no clash between runs)
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = (
            "c10d",
            "localhost:0",
            str(uuid.uuid4()),
        )
    if args.master_port is None:
        args.master_port = 29500  # torchrun's default for the static rendezvous
    config, _, _ = torchrun.config_from_args(args)
    return config


def launch(launch: Launch, entry: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run `entry(*args)` in every rank of this node; returns {rank: what entry returned}.
    A rank that fails has printed its own message; all ranks stop and this raises."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    launch.check()
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank(launch.nproc))  # what ranks inherit
    # the failed rank prints its own one-line error; the agent's traceback of the child
    # process would only bury it
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(_torchrun_config(launch), entry)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = (
            f"was killed by signal {-failure.exitcode}"
            if failure.exitcode < 0
            else f"failed (exit code {failure.exitcode}); its error is above"
        )
        raise StmlError(f"training stopped: rank {rank} {how}") from None
    except (KeyboardInterrupt, SignalException):
        raise Interrupted(
            "interrupted; the package holds the last complete epoch: continue with --resume"
        ) from None
    finally:
        agent_log.setLevel(level)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads
