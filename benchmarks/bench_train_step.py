"""Time one GR2ST training step (forward + backward + Adam) at the published widths.

Compares ours (dense-attention GAT, vectorised graph construction, the ``default``
profile's 1,024-row coordinate embeddings) with a straightforward implementation
written the way the published code is: PyG ``GATConv``, edges built by a Python double
loop over spots and 65,536-row coordinate embeddings. All variants compute the same
network function; steps alternate between the variants so that load from other
processes affects them alike. Two more variants separate the two changes.

Usage::

    python benchmarks/bench_train_step.py --out results/bench_train_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gr2st._utils.files import atomic_path
from gr2st._utils.seed import resolve_device
from gr2st.models import GR2STModule, ModelConfig, get_profile


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


def _variant(
    kind: type[GR2STModule], config: ModelConfig, n_genes: int, image_dim: int, device: torch.device
) -> tuple[GR2STModule, torch.optim.Optimizer]:
    torch.manual_seed(0)
    module = kind(n_genes=n_genes, image_dim=image_dim, config=config).to(device).train()
    return module, torch.optim.Adam(module.parameters(), lr=1e-4, weight_decay=1e-3)


def _step(module: GR2STModule, optimizer: torch.optim.Optimizer, batch: tuple[Tensor, ...]) -> None:
    loss = module(*batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench_train_step.json"))
    parser.add_argument("--spots", type=int, default=300)
    parser.add_argument("--genes", type=int, default=785)
    parser.add_argument("--image-dim", type=int, default=1280)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)

    gen = torch.Generator().manual_seed(0)
    side = int(args.spots**0.5) + 1
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    batch = tuple(
        t.to(device)
        for t in (
            torch.randn(args.spots, args.image_dim, generator=gen),
            torch.rand(args.spots, args.genes, generator=gen) * 3,
            grid.reshape(-1, 2)[: args.spots].float(),
            torch.randint(0, 6, (args.spots,), generator=gen),
        )
    )
    reference = get_profile("reference").model  # H=8, P=256, k=20/20, sum fusion
    rows = get_profile("default").model.n_positions
    variants = {
        "straightforward": (StraightforwardGR2ST, dataclasses.replace(reference, gat_impl="pyg")),
        "ours": (GR2STModule, dataclasses.replace(reference, n_positions=rows)),
        # The two changes apart: the GAT/graph code, and the coordinate table's size.
        f"straightforward, n_positions={rows}": (
            StraightforwardGR2ST,
            dataclasses.replace(reference, gat_impl="pyg", n_positions=rows),
        ),
        "ours, n_positions=65536": (GR2STModule, reference),
    }
    built = {
        name: _variant(kind, cfg, args.genes, args.image_dim, device)
        for name, (kind, cfg) in variants.items()
    }
    times: dict[str, list[float]] = {name: [] for name in built}
    for step in range(args.warmup + args.steps):
        for name, (module, optimizer) in built.items():
            elapsed = _timed(partial(_step, module, optimizer, batch), device)
            if step >= args.warmup:
                times[name].append(elapsed)

    names = list(built)
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "spots": args.spots,
        "genes": args.genes,
        "image_dim": args.image_dim,
        "heads": reference.heads,
        "proj_dim": reference.proj_dim,
        "k": [reference.k_dynamic, reference.k_spatial],
        "steps": args.steps,
        "median_ms": medians,
        "p10_p90_ms": {
            name: [statistics.quantiles(t, n=10)[0], statistics.quantiles(t, n=10)[-1]]
            for name, t in times.items()
        },
        "speedup_vs_straightforward": {
            name: medians[names[0]] / medians[name] for name in names[1:]
        },
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    for name in names:
        print(f"{name:40s} {medians[name]:9.1f} ms/step")
    for name, speedup in result["speedup_vs_straightforward"].items():
        print(f"speed-up of {name}: {speedup:.2f}x")


if __name__ == "__main__":
    main()
