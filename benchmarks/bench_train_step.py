"""Time GR2ST training: ours against the published model code, side by side, and at scale.

Four measurements, each written to one JSON file (``--out``) and printed as a table:

``steps`` (``--spots``, default 300, 3,000 and 20,000)
    One training step (forward, backward, Adam) over ``N`` spots as one batch, at the
    published widths (H = 8, P = 256, k = 20/20, 785 genes, D = 1,280). ``upstream`` is
    written the way the published code is: PyG ``GATConv``, edges built by a Python
    double loop over spots, ``cdist`` + ``topk`` spatial graph, 65,536-row coordinate
    embeddings and ``torch.optim.Adam`` with its default (per-parameter) implementation.
    ``reference`` and ``default`` are our two profiles (the same function as
    ``upstream``; ``default`` has 1,024 coordinate rows and dropout 0.3), stepped with
    the fused Adam that GR2ST's training loop uses (equal to the per-parameter update to
    1e-7 relative, not bit for bit); the ``+unfused`` variants step the same module with
    the per-parameter Adam, to show what the optimiser alone is worth.
    Where memory is short, ``--variants`` runs a subset (``upstream`` always belongs:
    ratios are taken within one run). Steps alternate between the variants so that load
    from other processes affects them alike; ``ratio_vs_upstream`` is upstream's median
    over each variant's. A variant whose estimated memory exceeds ``--max-gb`` is
    skipped and the reason recorded: at 20,000 spots one batch's N × N contrastive
    logits alone exceed 8 GB (the training loop cuts batches of ``train.batch_size``
    spots; ``epoch`` measures that).
``gat`` (``--gat-nodes``)
    One GAT layer's forward + backward, dense against the edge-list kernel, on spatial
    and functional k = 20 graphs: where ``model.gat_impl=auto`` switches
    (:data:`gr2st.models.gat.DENSE_MAX_NODES`).
``scaling`` (``--scale-spots`` × ``--scale-k``)
    The spatial graph plus one edge-list GAT layer (forward + backward) at 5k–20k
    spots, k = 10 and 20: a least-squares line through time against spots × k, and the
    functional graph's time (it scores every pair of spots, ``O(N²)`` by definition).
``epoch`` (``--epoch-spots``)
    ``GR2ST.train`` for one epoch on one synthetic section of ``N`` spots, each in a
    fresh subprocess: wall time of the epoch (batches of ``train.batch_size`` = 2,048
    spots, as the training loop cuts them), of building the retrieval bank (all ``N``
    spots in one forward pass) and peak RSS.

Usage::

    nice python benchmarks/bench_train_step.py                      # all four, ≈ 25 min here
    nice python benchmarks/bench_train_step.py --only steps --steps 5
    nice python benchmarks/bench_train_step.py --only gat,scaling
    nice python benchmarks/bench_train_step.py --only epoch --epoch-spots 5000,10000,20000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gr2st._utils.files import atomic_path
from gr2st.models import GR2STModule, ModelConfig, get_profile
from gr2st.models.gat import DENSE_MAX_NODES, DenseGATConv, SparseGATConv

sys.path.insert(0, str(Path(__file__).parent))
from bench_predict_slide import PeakRSS

GENES, IMAGE_DIM = 785, 1280


class StraightforwardGR2ST(GR2STModule):
    """GR2ST with the published code's graph construction (Python loops over spots)."""

    def dynamic_graph(self, h: Tensor, t: Tensor, types: Tensor | None) -> Tensor:
        c = self.config
        scores = h @ t.T / c.temperature
        if types is not None:
            scores = scores + c.same_type_bonus * (types[:, None] == types[None, :]).float()
        top = torch.topk(F.softmax(scores, dim=-1), min(c.k_dynamic, h.shape[0]), dim=-1).indices
        return _loop_edges(top, h.device)

    def spatial_graph(self, pos: Tensor) -> Tensor:
        dist = torch.cdist(pos, pos)
        top = torch.topk(-dist, min(self.config.k_spatial, pos.shape[0]), dim=-1).indices
        return _loop_edges(top, pos.device)


def _loop_edges(top: Tensor, device: torch.device) -> Tensor:
    edges = []
    for i in range(top.shape[0]):
        for j in range(top.shape[1]):
            edges.append([i, top[i, j]])
    return torch.tensor(edges, dtype=torch.long).t().contiguous().to(device)


def _grid(n: int) -> Tensor:
    side = math.isqrt(n - 1) + 1
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    return grid.reshape(-1, 2)[:n].float()


def _batch(n: int) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, IMAGE_DIM, generator=gen),
        torch.rand(n, GENES, generator=gen) * 3,
        _grid(n),
        torch.randint(0, 6, (n,), generator=gen),
    )


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ---------------------------------------------------------------------------- steps
def _step(module: GR2STModule, optimizer: torch.optim.Optimizer, batch: tuple[Tensor, ...]) -> None:
    loss = module(*batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _step_gb(n: int, config: ModelConfig, *, upstream: bool) -> float:
    """Rough peak memory of one step: N × N loss matrices, coordinate tables (weights,
    gradients, two Adam moments) and, for PyG's GATConv, its saved (edges, H, C) tensors."""
    loss = 7 * n * n * 4
    tables = 2 * config.n_positions * GENES * 4 * 4
    messages = 2 * 4 * n * (config.k_spatial + 1) * config.heads * config.proj_dim * 4
    return (loss + tables + (messages if upstream else 0)) / 1e9


def run_steps(n: int, args: argparse.Namespace) -> dict[str, Any]:
    reference, default = get_profile("reference").model, get_profile("default").model
    models: dict[str, tuple[type[GR2STModule], ModelConfig]] = {
        "upstream": (StraightforwardGR2ST, dataclasses.replace(reference, gat_impl="pyg")),
        "reference": (GR2STModule, reference),
        "default": (GR2STModule, default),
    }
    modules: dict[str, GR2STModule] = {}
    built: dict[str, tuple[GR2STModule, torch.optim.Optimizer]] = {}
    skipped: dict[str, str] = {}
    for name in args.variants.split(","):
        # "+unfused" steps the same module (its own Adam state): only timing is compared.
        model, _, plain = name.partition("+")
        kind, config = models[model]
        gb = _step_gb(n, config, upstream=kind is StraightforwardGR2ST)
        if gb > args.max_gb:
            skipped[name] = (
                f"not run: one step over {n} spots needs ≈{gb:.0f} GB (> --max-gb "
                f"{args.max_gb:g}): N×N contrastive logits"
                + (" and PyG's (edges, heads, channels) messages" if name == "upstream" else "")
            )
            continue
        if model not in modules:
            torch.manual_seed(0)
            modules[model] = kind(n_genes=GENES, image_dim=IMAGE_DIM, config=config).train()
        module = modules[model]
        # Ours steps with the training loop's fused Adam, upstream with the default one.
        fused = model != "upstream" and plain != "unfused"
        optimizer = torch.optim.Adam(
            module.parameters(), lr=1e-4, weight_decay=1e-3, fused=fused or None
        )
        built[name] = (module, optimizer)
    batch = _batch(n)
    times: dict[str, list[float]] = {name: [] for name in built}
    for step in range(args.warmup + args.steps):
        for name, (module, optimizer) in built.items():
            start = time.perf_counter()
            _step(module, optimizer, batch)
            if step >= args.warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    del built, modules
    medians = {name: statistics.median(t) for name, t in times.items()}
    up = medians.get("upstream")
    return {
        "spots": n,
        "median_ms": medians,
        "min_max_ms": {name: [min(t), max(t)] for name, t in times.items()},
        "ratio_vs_upstream": {
            name: up / m for name, m in medians.items() if up is not None and name != "upstream"
        },
        "skipped": skipped,
    }


# ---------------------------------------------------------------------------- gat
def _graphs(n: int, k: int) -> dict[str, Tensor]:
    from gr2st.graph import functional_topk_graph, spatial_knn_graph

    gen = torch.Generator().manual_seed(n)
    h, t = torch.randn(n, 256, generator=gen), torch.randn(n, 256, generator=gen)
    types = torch.randint(0, 6, (n,), generator=gen)
    return {
        "spatial": spatial_knn_graph(_grid(n), k=k),
        "functional": functional_topk_graph(h, t, types, k=k),
    }


def _layer_ms(conv: torch.nn.Module, n: int, edge_index: Tensor, repeats: int) -> float:
    x = torch.randn(n, 256, requires_grad=True)
    grad = torch.randn(n, conv.heads * conv.out_channels)
    return _median_ms(lambda: conv(x, edge_index).backward(grad), repeats)


def run_gat(nodes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    dense = DenseGATConv(256, 256, heads=8, dropout=0.1).train()
    sparse = SparseGATConv(256, 256, heads=8, dropout=0.1).train()
    rows = []
    for n in nodes:
        for kind, edge_index in _graphs(n, 20).items():
            d, s = [], []
            for _ in range(args.gat_rounds):  # alternate, so load hits both alike
                d.append(_layer_ms(dense, n, edge_index, 1))
                s.append(_layer_ms(sparse, n, edge_index, 1))
            rows.append(
                {
                    "nodes": n,
                    "graph": kind,
                    "dense_ms": statistics.median(d),
                    "sparse_ms": statistics.median(s),
                }
            )
    faster = [r["nodes"] for r in rows if r["sparse_ms"] < r["dense_ms"]]
    return {
        "rows": rows,
        "dense_max_nodes_in_use": DENSE_MAX_NODES,
        "smallest_size_where_sparse_won": min(faster) if faster else None,
    }


# ---------------------------------------------------------------------------- scaling
def _spatial_branch(conv: torch.nn.Module, x: Tensor, pos: Tensor, grad: Tensor, k: int) -> None:
    from gr2st.graph import spatial_knn_graph

    conv(x, spatial_knn_graph(pos, k=k)).backward(grad)


def run_scaling(spots: list[int], ks: list[int], args: argparse.Namespace) -> dict[str, Any]:
    from gr2st.graph import functional_topk_graph

    torch.manual_seed(0)
    conv = SparseGATConv(256, 256, heads=8, dropout=0.1).train()
    rows = []
    for n in spots:
        pos, x = _grid(n), torch.randn(n, 256, requires_grad=True)
        grad = torch.randn(n, 2048)
        h, t = torch.randn(n, 256), torch.randn(n, 256)
        types = torch.randint(0, 6, (n,))
        for k in ks:
            branch = partial(_spatial_branch, conv, x, pos, grad, k)
            rows.append(
                {
                    "spots": n,
                    "k": k,
                    "spatial_graph_plus_gat_ms": _median_ms(branch, args.scale_repeats),
                    "functional_graph_ms": _median_ms(
                        partial(functional_topk_graph, h, t, types, k=k), args.scale_repeats
                    ),
                }
            )
    x_ = np.array([r["spots"] * r["k"] for r in rows], dtype=float)
    y_ = np.array([r["spatial_graph_plus_gat_ms"] for r in rows])
    slope, intercept = np.polyfit(x_, y_, 1)
    fit = slope * x_ + intercept
    r2 = 1 - ((y_ - fit) ** 2).sum() / ((y_ - y_.mean()) ** 2).sum()
    return {
        "rows": rows,
        "linear_fit_ms": {
            "slope_us_per_spot_neighbour": slope * 1000,
            "intercept_ms": intercept,
            "r2": r2,
            "max_relative_residual": float(np.abs(y_ - fit).max() / y_.min()),
        },
    }


# ---------------------------------------------------------------------------- epoch
def one_epoch(n: int, profile: str) -> dict[str, Any]:
    """Train one epoch on a synthetic section of ``n`` spots (run in a fresh process)."""
    from anndata import AnnData

    from gr2st._constants import ARRAY_X, ARRAY_Y, CELL_TYPE, SECTION
    from gr2st.models import GR2ST

    rng = np.random.default_rng(0)
    grid = _grid(n).numpy().astype(int)
    adata = AnnData(X=(rng.random((n, GENES), dtype=np.float32) * 3))
    adata.obs[ARRAY_X], adata.obs[ARRAY_Y] = grid[:, 1], grid[:, 0]
    adata.obs[CELL_TYPE] = rng.integers(0, 6, n)
    adata.obs[SECTION] = "big"
    adata.obsm["X_bench"] = rng.standard_normal((n, IMAGE_DIM), dtype=np.float32)
    with PeakRSS() as rss:
        start = time.perf_counter()
        model = GR2ST([adata], feature_key="X_bench", profile=profile, device="cpu",
                      overrides=["train.epochs=1"])  # fmt: skip
        marks: list[float] = []
        model.train(progress=False, on_epoch_end=lambda *_: marks.append(time.perf_counter()))
        end = time.perf_counter()
    batch = model.config.train.batch_size
    return {
        "spots": n,
        "profile": profile,
        "steps": -(-n // batch),
        "batch_size": batch,
        "epoch_s": marks[0] - start,
        "bank_s": end - marks[0],
        "peak_rss_gib": rss.peak / 2**30,
        "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_epochs(spots: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for profile in args.epoch_profiles.split(","):
        for n in spots:
            command = [sys.executable, __file__, "--one-epoch", str(n), "--profile", profile]
            command += ["--threads", str(args.threads)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"epoch {profile:9s} {n:>6} spots: {r['epoch_s']:7.1f} s ({r['steps']} steps), "
                f"bank {r['bank_s']:6.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB",
                flush=True,
            )
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench_train_step.json"))
    parser.add_argument("--only", default="steps,gat,scaling,epoch")
    parser.add_argument("--spots", default="300,3000,20000")
    parser.add_argument(
        "--variants", default="upstream,reference,default,reference+unfused,default+unfused"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-gb", type=float, default=8.0)
    parser.add_argument("--gat-nodes", default="50,100,150,200,250,300,400,600,1000")
    parser.add_argument("--gat-rounds", type=int, default=5)
    parser.add_argument("--scale-spots", default="5000,10000,20000")
    parser.add_argument("--scale-k", default="10,20")
    parser.add_argument("--scale-repeats", type=int, default=3)
    parser.add_argument("--epoch-spots", default="5000,10000,20000")
    parser.add_argument("--epoch-profiles", default="default,reference")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one-epoch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one_epoch is not None:
        print(json.dumps(one_epoch(args.one_epoch, args.profile)))
        return
    only = set(args.only.split(","))
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_start": os.getloadavg(),
        "widths": {"genes": GENES, "image_dim": IMAGE_DIM, "heads": 8, "proj_dim": 256, "k": 20},
    }
    if "steps" in only:
        result["steps"] = []
        for n in _ints(args.spots):
            row = run_steps(n, args)
            result["steps"].append(row)
            print(f"\n{n} spots, one step (median ms; ratio = upstream / variant)")
            for name, ms in row["median_ms"].items():
                ratio = row["ratio_vs_upstream"].get(name)
                print(f"  {name:16s} {ms:10.1f}" + (f"  {ratio:5.2f}x" if ratio else ""))
            for name, why in row["skipped"].items():
                print(f"  {name:16s} {why}")
    if "gat" in only:
        result["gat"] = run_gat(_ints(args.gat_nodes), args)
        print("\nGAT layer forward + backward (ms): nodes, graph, dense, edge-list")
        for r in result["gat"]["rows"]:
            print(f"  {r['nodes']:6d} {r['graph']:10s} {r['dense_ms']:9.1f} {r['sparse_ms']:9.1f}")
    if "scaling" in only:
        result["scaling"] = run_scaling(_ints(args.scale_spots), _ints(args.scale_k), args)
        print("\nspatial graph + edge-list GAT (fwd+bwd), functional graph (ms)")
        for r in result["scaling"]["rows"]:
            print(
                f"  {r['spots']:6d} spots k={r['k']:<3d} {r['spatial_graph_plus_gat_ms']:9.1f} "
                f"{r['functional_graph_ms']:9.1f}"
            )
        fit = result["scaling"]["linear_fit_ms"]
        print(
            f"  line: {fit['slope_us_per_spot_neighbour']:.2f} µs per spot·neighbour + "
            f"{fit['intercept_ms']:.0f} ms, R² {fit['r2']:.4f}"
        )
    if "epoch" in only:
        result["epoch"] = run_epochs(_ints(args.epoch_spots), args)
    result["load_average_end"] = os.getloadavg()
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
