"""Benchmark: gallery search, side by side in one run.

    .venv/bin/python benchmarks/search.py [--sizes 100000,1000000] [--dims 128,512] [--hnsw 100000x128,100000x512]

Random unit vectors (the hardest case for approximate search: no cluster structure), a batch
of 100 queries, k = 10. Exact: stml_deploy.neighbours.nearest with faiss (faiss.knn, inner product, BLAS from 20
queries as stml sets it) vs with numpy (matmul + argpartition over blocks of queries). HNSW (faiss IndexHNSWFlat, M 32,
efConstruction 200, efSearch 128, as stml's --kind hnsw): build time, recall@10 against exact
and speed-up over faiss exact."""

from __future__ import annotations

import argparse
import platform
import time

import faiss
import numpy as np

from stml_deploy.index import GalleryIndex
from stml_deploy.neighbours import nearest, overlap, unit


def random_unit(n: int, d: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32))


def clustered(n: int, d: int, seed: int, clusters: int = 1000, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around `clusters` random centres: closer to how real embeddings lie."""
    rng = np.random.default_rng(seed)
    centres = random_unit(clusters, d, seed + 100)
    x = centres[rng.integers(0, clusters, size=n)] + rng.standard_normal(
        (n, d), dtype=np.float32
    ) * (spread / np.sqrt(d))
    return unit(x)


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dims", default="128,512")
    parser.add_argument(
        "--hnsw", default="100000x128,100000x512"
    )  # a 1M-vector HNSW build takes > 15 min on 2 cores
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--clustered",
        default="100000x128,100000x512",
        help="HNSW also on clustered vectors of these sizes",
    )
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), numpy {np.__version__}; "
          f"{args.queries} queries, k = 10, best of 3")  # fmt: skip
    print(
        "\n| gallery | dim | faiss exact (queries/s) | numpy exact (queries/s) | faiss / numpy | same top-10 |"
    )
    print("|---|---|---|---|---|---|")
    exact_speed: dict[tuple[int, int], float] = {}
    hnsw_wanted = {tuple(int(v) for v in item.split("x")) for item in args.hnsw.split(",") if item}
    hnsw_rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for d in (int(s) for s in args.dims.split(",")):
            gallery, queries = random_unit(n, d, 0), random_unit(args.queries, d, 1)
            t_faiss, found_faiss = best_of(
                lambda g=gallery, q=queries: nearest(q, g, 10, engine="faiss").indices
            )
            t_numpy, found_numpy = best_of(
                lambda g=gallery, q=queries: nearest(q, g, 10, engine="numpy").indices
            )
            same = float(np.mean(found_faiss == found_numpy))
            exact_speed[(n, d)] = args.queries / t_faiss
            print(
                f"| {n:,} | {d} | {args.queries / t_faiss:,.0f} | {args.queries / t_numpy:,.0f} | {t_numpy / t_faiss:.1f}x | {same:.3f} |",
                flush=True,
            )
            if (n, d) in hnsw_wanted:
                model = {
                    "name": "bench",
                    "weights_sha256": "0" * 64,
                    "package": "-",
                    "embedding_dim": d,
                }
                started = time.perf_counter()
                index = GalleryIndex.create(model, gallery, [str(i) for i in range(n)], kind="hnsw")
                build = time.perf_counter() - started
                t_hnsw, result = best_of(lambda ix=index, q=queries: ix.search(q, 10))
                recall = overlap(result.indices, found_faiss)
                hnsw_rows.append(
                    f"| {n:,} | {d} | {build:.0f} | {recall:.3f} | {args.queries / t_hnsw:,.0f} | {t_faiss / t_hnsw:.1f}x |"
                )
            del gallery
    print(
        "\n| gallery | dim | HNSW build (s) | recall@10 vs exact | HNSW queries/s | speed-up over faiss exact |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(hnsw_rows))
    print(
        "\nClustered unit vectors (1,000 centres, within-cluster spread 0.35): what real embeddings look like"
    )
    print(
        "\n| gallery | dim | HNSW build (s) | recall@10 vs exact | HNSW queries/s | speed-up over faiss exact |"
    )
    print("|---|---|---|---|---|---|")
    for item in (s for s in args.clustered.split(",") if s):
        n, d = (int(v) for v in item.split("x"))
        both = clustered(n + args.queries, d, 2)
        gallery, queries = both[:n], both[n:]
        t_faiss, truth = best_of(
            lambda g=gallery, q=queries: nearest(q, g, 10, engine="faiss").indices
        )
        model = {"name": "bench", "weights_sha256": "0" * 64, "package": "-", "embedding_dim": d}
        started = time.perf_counter()
        index = GalleryIndex.create(model, gallery, [str(i) for i in range(n)], kind="hnsw")
        build = time.perf_counter() - started
        t_hnsw, result = best_of(lambda ix=index, q=queries: ix.search(q, 10))
        recall = overlap(result.indices, truth)
        print(
            f"| {n:,} | {d} | {build:.0f} | {recall:.3f} | {args.queries / t_hnsw:,.0f} | {t_faiss / t_hnsw:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
