"""Our layers on inputs spread three ways: how much of their time goes to the scatter of the rows they read.

    python benchmarks/spread.py [--quick] [--segments S ...] [--out FILE]

Every sample reads, for each input, the n rows of that input's K-row weight table that belong to the segment
it falls in. With inputs spread over [-1, 1), as in benchmarks/layers.py, those rows are scattered over the
table; sorted, each input's samples visit its segments in order; in one segment, every sample reads the same
rows. The multiply-adds are the same in all three. For each real-valued case of benchmarks/layers.py (batch
1024, one thread and all threads) this script times, taking turns in one process, our layer's forward pass
(no autograd graph) and its training step (forward and backward, as layers.py times it) on three batches:
uniform in [-1, 1) (layers.py's), the same values sorted within each input's column, and every value in the
middle half of one segment. The ratios to the uniform batch are medians of turn-by-turn ratios. Prints a
table; writes JSON {"rows": [...]} to --out (default benchmarks/results/spread.json).
"""

import argparse
import statistics
from pathlib import Path

import torch
from layers import (
    chosen_cases,
    forward_of,
    layer_and_input,
    markdown,
    median_ratio,
    pass_of,
    path_taken,
    save,
    turns_ms,
)
from torch import Tensor

from langinterp.heap import keep_freed_memory

SPREADS = ("uniform", "sorted", "one_segment")


def spread_inputs(x: Tensor, segments: int) -> dict[str, Tensor]:
    """x [rows, in] uniform in [-1, 1) as given, sorted within each column, and a batch of the same shape
    whose every value lies in the middle half of segment segments // 2 (clear of its ends, so that rounding
    cannot carry a value into the next segment)."""
    middle = segments // 2
    inside = 0.25 + 0.5 * torch.rand_like(x)
    return {
        "uniform": x,
        "sorted": x.sort(dim=0).values,
        "one_segment": 2 * (middle + inside) / segments - 1,
    }


def measure(case: tuple, threads: int, quick: bool) -> dict:
    """One row: our layer's forward pass and training step on each spread of inputs, taking turns."""
    name, inputs, outputs, n, segments = case
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    repeats, warmup = (5, 2) if quick else (15, 3)
    layer, uniform = layer_and_input(case, "cpu")
    # A hidden layer's input needs a gradient, as in benchmarks/layers.py.
    batches = {key: x.requires_grad_(name == "hidden") for key, x in spread_inputs(uniform, segments).items()}
    row = {
        "case": name, "in": inputs, "out": outputs, "n": n, "segments": segments, "threads": threads,
        "device": "cpu", "path": path_taken(layer, uniform),
    }  # fmt: skip
    for kind, make in (("forward", forward_of), ("step", pass_of)):
        times = turns_ms({key: make(layer, x) for key, x in batches.items()}, repeats, warmup)
        for key in SPREADS:
            row[f"{key}_{kind}_ms"] = statistics.median(times[key])
            if key != "uniform":
                row[f"{key}_{kind}_ratio"] = median_ratio(times[key], times["uniform"])
    return row


def table(rows: list[dict]) -> str:
    kinds = ("forward", "step")
    header = ["case", "in", "out", "n", "segments", "threads", "path"]
    header += [f"{kind} ms: {spread.replace('_', ' ')}" for kind in kinds for spread in SPREADS]
    header += [f"{kind}: {spread.replace('_', ' ')} / uniform" for kind in kinds for spread in SPREADS[1:]]
    cells = [
        [r["case"], r["in"], r["out"], r["n"], r["segments"], r["threads"], r["path"]]
        + [f"{r[f'{spread}_{kind}_ms']:.2f}" for kind in kinds for spread in SPREADS]
        + [f"{r[f'{spread}_{kind}_ratio']:.2f}" for kind in kinds for spread in SPREADS[1:]]
        for r in rows
    ]
    return markdown(header, cells)


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--segments", type=int, nargs="+", help="only the cases with these segment counts")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "spread.json"
    )
    args = parser.parse_args()
    cases = [case for case in chosen_cases(args.segments, "auto") if case[0] != "input codes"]
    if not cases:
        parser.error("no real-valued case has those segment counts")
    all_threads = torch.get_num_threads()
    try:
        rows = [measure(case, threads, args.quick) for case in cases for threads in sorted({1, all_threads})]
    finally:
        torch.set_num_threads(all_threads)
    print(table(rows))
    save(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
