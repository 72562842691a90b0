"""The layers' passes with one and with all threads over time, second by second, in one process.

    python benchmarks/threads.py [--seconds N] [--out FILE]

On the shared development host the passes of our layers with two threads sometimes take about three times as
long as at other times (benchmarks/README.md, *Layers*). This script tells whether such a slow mode belongs to
a process or to a period of time, and whether one thread is spared: for --seconds seconds it takes turns
between the forward pass of the layer over character codes (16 inputs, 250 outputs, 128 segments, batch 1024:
the pass that moved most) with one thread, the same with all threads, and nn.Linear(in*n, out)'s forward pass
with all threads, and reports each one's median time per second. Prints a table; writes JSON {"rows": [...]}
to --out (default benchmarks/results/threads.json).
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from layers import BATCH, forward_of, layer_and_input, markdown, save
from torch import nn

from langinterp.heap import keep_freed_memory

CASE = ("input codes", 16, 250, 2, 128)


def forward_pass(module: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], float]:
    """One forward pass (no autograd graph) with ``threads`` threads, returning its time in ms."""

    forward = forward_of(module, x)

    def step() -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        forward()
        return (time.perf_counter() - start) * 1e3

    return step


def timeline(seconds: int) -> list[dict]:
    """One row per second: the median time of each pass over the calls made in that second."""
    all_threads = torch.get_num_threads()
    torch.manual_seed(0)
    layer, codes = layer_and_input(CASE, "cpu")
    _, inputs, outputs, n, _ = CASE
    linear, wide = nn.Linear(inputs * n, outputs, bias=False), torch.randn(BATCH, inputs * n)
    steps = {
        "ours_1_ms": forward_pass(layer, codes, 1),
        "ours_all_ms": forward_pass(layer, codes, all_threads),
        "linear_all_ms": forward_pass(linear, wide, all_threads),
    }
    try:
        for step in steps.values():
            for _ in range(5):
                step()
        rows = []
        for second in range(seconds):
            times: dict[str, list[float]] = {name: [] for name in steps}
            end = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                for name, step in steps.items():
                    times[name].append(step())
            rows.append(
                {"second": second, "threads": all_threads}
                | {name: statistics.median(t) for name, t in times.items()}
            )
        return rows
    finally:
        torch.set_num_threads(all_threads)


def table(rows: list[dict]) -> str:
    keys = ("ours_1_ms", "ours_all_ms", "linear_all_ms")
    return markdown(
        ["second", "ours, 1 thread ms", "ours, all threads ms", "Linear(in*n), all threads ms"],
        [[r["second"], *(f"{r[key]:.2f}" for key in keys)] for r in rows],
    )


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="how long to take turns")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "threads.json"
    )
    args = parser.parse_args()
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    rows = timeline(args.seconds)
    print(table(rows))
    save(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
