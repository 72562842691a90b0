"""Sequence-model speed: a Mamba training step with each selective scan (the sequential loop, the
pure-PyTorch chunked scan, the fused CPU kernel), generation cost per character after short and long
prompts, and the transformer's training throughput with piecewise vs nn.Linear layers.

    python benchmarks/sequence.py [--quick] [--out FILE]

Prints one table per measurement and writes {"rows": [...]} (default benchmarks/results/sequence.json).
Every row names its benchmark, settings, the measured seconds and the derived ratio or rate; a Mamba row
gives each scan's seconds per step and its speed-up over the sequential loop. Times use torch's current
thread count (set OMP_NUM_THREADS to fix it).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from langinterp.heap import keep_freed_memory
from langinterp.models import build_model
from langinterp.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
# The scans timed in a Mamba training step; the fused kernel needs a C++ compiler (see native.py).
SCANS = ("sequential", "chunked", "cpu_kernel")
RESULTS = ROOT / "benchmarks" / "results" / "sequence.json"


def best_time(work: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs after one warm-up: the least disturbed by other processes."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def training_step(model: torch.nn.Module, codes: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        logits = model(codes[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes[:, 1:].reshape(-1))
        model.zero_grad()
        loss.backward()

    return step


def mamba_scan_rows(lengths: list[int], batch: int, repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        torch.manual_seed(0)
        model = build_model(load_recipe(ROOT / "recipes" / "mamba.toml", [f"data.context={length}"]))
        codes = torch.randint(0, 128, (batch, length + 1))
        seconds = {}
        for scan in SCANS:
            for mixer in model.mixers:
                mixer.scan = scan
            seconds[scan] = best_time(training_step(model, codes), repeats)
        row = {"benchmark": "mamba_training_step", "length": length, "batch": batch}
        row |= {f"{scan}_s": seconds[scan] for scan in SCANS}
        row |= {f"{scan}_speedup": seconds["sequential"] / seconds[scan] for scan in SCANS[1:]}
        rows.append(row)
    return rows


def mamba_generation_rows(prompts: list[int], new_chars: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(load_recipe(ROOT / "recipes" / "mamba.toml")).eval()
    rows, per_char = [], {}
    for prompt in prompts:
        with torch.inference_mode():
            state = model.init_state(1)
            for code in torch.randint(0, 128, (prompt,)):
                logits, state = model.step(code.view(1), state)
            start = time.perf_counter()
            for _ in range(new_chars):
                logits, state = model.step(logits.argmax(-1), state)
            per_char[prompt] = (time.perf_counter() - start) / new_chars
        rows.append(
            {
                "benchmark": "mamba_generation",
                "prompt_chars": prompt,
                "new_chars": new_chars,
                "seconds_per_char": per_char[prompt],
                "ratio_to_shortest_prompt": per_char[prompt] / per_char[prompts[0]],
            }
        )
    return rows


def transformer_rows(batch: int, repeats: int) -> list[dict]:
    rows = []
    for layer in ("continuous", "linear"):
        torch.manual_seed(0)
        recipe = load_recipe(ROOT / "recipes" / "transformer.toml", [f"model.layer={layer!r}"])
        model = build_model(recipe)
        codes = torch.randint(0, 128, (batch, recipe.data["context"] + 1))
        seconds = best_time(training_step(model, codes), repeats)
        rows.append(
            {
                "benchmark": "transformer_training",
                "layer": layer,
                "batch": batch,
                "context": recipe.data["context"],
                "step_s": seconds,
                "chars_per_s": batch * recipe.data["context"] / seconds,
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    cells = [[f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    print()


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file for the rows")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    lengths = [64, 256] if args.quick else [64, 256, 1024]
    groups = [
        mamba_scan_rows(lengths, batch=8, repeats=repeats),
        mamba_generation_rows([64, 1024 if args.quick else 4096], new_chars=50 if args.quick else 200),
        transformer_rows(batch=64 if args.quick else 256, repeats=repeats),
    ]
    for rows in groups:
        print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": [row for rows in groups for row in rows]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
