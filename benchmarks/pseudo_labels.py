"""Benchmark: vectorized contextual similarity (training/similarity.py) against a per-row
loop implementation with the reference code's structure, side by side in one run.

    .venv/bin/python benchmarks/pseudo_labels.py [--sizes 240,480,960] [--dim 1024] [--repeats 20]

Prints, per batch size N (= images x views): median time of the loop version, of ours, of the
one N x N x d distance product alone, the speed-up, and the max |difference| of W."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from training.similarity import contextual_similarity


@torch.no_grad()
def loop_version(z: torch.Tensor, ids: torch.Tensor, sigma: float, k: int) -> torch.Tensor:
    """W computed as the reference code does: vectorized W_P and top-k, a Python loop over
    rows for W~_C, gathered rows for the query expansion. Same tie rule as ours (self first,
    then same-image pairs by index), so the outputs are comparable."""
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    w_p = torch.exp(-torch.cdist(z, z).pow(2) / sigma)
    by_index = 2.0 + (n - torch.arange(n, dtype=z.dtype)) / n
    rank_by = torch.where(ids[:, None] == ids[None, :], by_index[None, :], w_p)
    rank_by.diagonal().fill_(4.0)
    topk = torch.topk(rank_by, k, dim=1).indices
    nn = torch.zeros_like(w_p).scatter_(1, topk, 1.0)
    v = ((nn + nn.T) / 2 == 1).float()
    w_c_tilde = torch.zeros_like(w_p)
    for i in range(n):
        members = torch.nonzero(v[i]).squeeze(1)
        w_c_tilde[i, members] = v[:, members].sum(1)[members] / len(members)
    w_c_hat = w_c_tilde[topk[:, : int(round(k / 2))]].mean(1)
    w_c = (w_c_hat + w_c_hat.T) / 2
    return (w_p + w_c) / 2


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="240,480,960")
    parser.add_argument("--dim", type=int, default=1024, help="teacher g dimension (paper: 1024)")
    parser.add_argument("--topk", type=int, default=10, help="neighbours x views (paper: 5 x 2)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; d={args.dim}, k={args.topk}, float32, CPU")  # fmt: skip
    print(
        "| N | loop (ms) | vectorized (ms) | N x N x d product (ms) | speed-up | vectorized / product | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for n in (int(s) for s in args.sizes.split(",")):
        ids = torch.arange(n // 2).repeat(2)  # 2 views per image
        z = torch.randn(n, args.dim, generator=gen)
        loop_ms = (
            median_time(
                lambda z=z, ids=ids: loop_version(z, ids, 3.0, args.topk), max(3, args.repeats // 4)
            )
            * 1e3
        )
        ours_ms = (
            median_time(
                lambda z=z, ids=ids: contextual_similarity(z, ids, 3.0, args.topk), args.repeats
            )
            * 1e3
        )
        prod_ms = median_time(lambda z=z: z @ z.T, args.repeats) * 1e3
        diff = float(
            (loop_version(z, ids, 3.0, args.topk) - contextual_similarity(z, ids, 3.0, args.topk))
            .abs()
            .max()
        )
        print(
            f"| {n} | {loop_ms:.2f} | {ours_ms:.2f} | {prod_ms:.2f} | {loop_ms / ours_ms:.1f}x | {ours_ms / prod_ms:.1f}x | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
