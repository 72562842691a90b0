"""Training and generation speed of `sparse_mlp` against a plain PyTorch MLP and high-order-layers-torch.

    python benchmarks/train.py [--quick] [--out FILE]

Three networks with the shapes of recipes/sparse_mlp.toml (16 characters -> 200 -> 200 -> 128, n = 2):
- sparse_mlp: langinterp's model, built from the recipe (table-lookup input layer, piecewise layers), and
  the same model with its hidden and output layers forced onto the reduced basis (reduced.py) instead of
  the kink basis they take (kinks.py): the comparison behind that choice;
- plain MLP: nn.Linear layers with the same matmul shapes (in*n -> out per layer) and the same LayerNorms,
  which is the floor a piecewise layer can hope for (it does the same multiply-adds plus a gather);
- high-order-layers-torch: the same network from that package's PiecewisePolynomial layers.
Each row times a full training step (forward, cross-entropy, backward, Lion step) at batch 1000, the median
of repeated steps after warm-up, in this one process. The two sparse_mlp variants and the plain MLP take
turns, so that load from elsewhere on a shared machine falls on all alike, and each ratio is the median of
the turn-by-turn ratios. high-order-layers-torch copies its weights per sample, so it runs at a smaller
batch and its step time is scaled linearly to 1000 (its `batch` column says so). The last row is
generation: characters per second of `langinterp.sampling.generate` with sparse_mlp.

Prints a table; writes JSON {"rows": [{"model", "batch", "step_ms", "chars_per_s", "ratio"}]} to --out
(default benchmarks/results/train.json); ratio is to the plain MLP (None for generation).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from layers import median_ms, median_ratio, save, turns_ms
from lion_pytorch import Lion
from torch import nn

from langinterp.heap import keep_freed_memory
from langinterp.layers import HighOrderLinear, codes_to_unit
from langinterp.models import build_model
from langinterp.recipe import load_recipe
from langinterp.sampling import SamplingOptions, generate

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000


def training_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    optimizer = Lion(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    return step


class Widen(nn.Module):
    """Feeds a Linear(in*n) the same number of values a piecewise layer reads (n basis values per input)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.n, dim=-1)


def plain_mlp(context: int, width: int, n: int) -> nn.Module:
    return nn.Sequential(
        Widen(n),
        nn.Linear(context * n, width),
        nn.LayerNorm(width),
        Widen(n),
        nn.Linear(width * n, width),
        nn.LayerNorm(width),
        Widen(n),
        nn.Linear(width * n, 128),
    )


def hol_mlp(context: int, width: int, model: dict) -> nn.Module | None:
    try:
        from high_order_layers_torch.PolynomialLayers import PiecewisePolynomial
    except ImportError:
        return None
    source, hidden, target = model["input"], model["hidden"], model["output"]
    return nn.Sequential(
        PiecewisePolynomial(source["n"], context, width, source["segments"]),
        nn.LayerNorm(width),
        PiecewisePolynomial(hidden["n"], width, width, hidden["segments"]),
        nn.LayerNorm(width),
        PiecewisePolynomial(target["n"], width, 128, target["segments"]),
    )


def run(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    recipe = load_recipe(ROOT / "recipes" / "sparse_mlp.toml")
    context, width, n = recipe.data["context"], recipe.model["hidden"]["width"], recipe.model["hidden"]["n"]
    repeats, warmup = (5, 2) if quick else (20, 3)
    codes = torch.randint(0, 128, (BATCH, context))
    targets = torch.randint(0, 128, (BATCH,))

    ours = build_model(recipe)
    reduced = build_model(recipe)
    reduced.load_state_dict(ours.state_dict())
    for module in reduced.modules():
        if isinstance(module, HighOrderLinear):
            module.path = "reduced"
    plain = plain_mlp(context, width, n)
    units = codes_to_unit(codes)
    steps = {
        "ours": training_step(ours, codes, targets),
        "reduced": training_step(reduced, codes, targets),
        "plain": training_step(plain, units, targets),
    }
    times = turns_ms(steps, repeats, warmup)
    plain_ms = statistics.median(times["plain"])

    def ratio(name: str) -> float:
        return median_ratio(times[name], times["plain"])

    rows = [
        ("sparse_mlp (langinterp)", BATCH, statistics.median(times["ours"]), ratio("ours")),
        ("sparse_mlp on the reduced basis", BATCH, statistics.median(times["reduced"]), ratio("reduced")),
        ("plain MLP, same matmuls", BATCH, plain_ms, 1.0),
    ]
    hol = hol_mlp(context, width, recipe.model)
    if hol is not None:
        small = 25 if quick else 100
        step = training_step(hol, units[:small], targets[:small])
        hol_ms = median_ms({"hol": step}, 2 if quick else 3, 1)["hol"] * BATCH / small
        rows.append(("high-order-layers-torch", small, hol_ms, hol_ms / plain_ms))

    results = [
        {"model": name, "batch": batch, "step_ms": ms, "chars_per_s": BATCH / ms * 1000, "ratio": ratio}
        for name, batch, ms, ratio in rows
    ]
    chars = 100 if quick else 400
    prompt = "The Dunwich Horror"
    started = time.perf_counter()
    text = "".join(generate(ours, prompt, chars, SamplingOptions(), seed=0))
    elapsed = time.perf_counter() - started
    results.append(
        {
            "model": "sparse_mlp generate",
            "batch": 1,
            "step_ms": elapsed / len(text) * 1000,
            "chars_per_s": len(text) / elapsed,
            "ratio": None,
        }
    )
    return results


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, smaller high-order-layers-torch batch"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()
    rows = run(args.quick)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| model | batch | step ms (batch 1000) | chars/s | / plain MLP |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        cells = [
            row["model"],
            str(row["batch"]),
            f"{row['step_ms']:.2f}",
            f"{row['chars_per_s']:,.0f}",
            ratio,
        ]
        print("| " + " | ".join(cells) + " |")
    save(args.out, {"threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
