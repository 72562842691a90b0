"""Where the dense path stops paying on the CPU: the paths of a layer against the matmul, by K/n.

    python benchmarks/paths.py [--quick] [--width W] [--batch B] [--inference] [--case KIND:N:SEGMENTS ...]
                               [--out FILE]

A HighOrderLinear with K weights per link and n nodes can take the dense path (a [rows, in*K] basis matrix
times the weight table: K/n times a Linear's multiply-adds, at BLAS speed) or the compiled kernel (the n
active rows of each input only, at a few times a Linear's cost per multiply-add). For each case (kind, n,
segments) below, at batch 1024 with 250 inputs and outputs, with one thread and with all threads, it times
a forward+backward pass of the layer forced onto each path and of nn.Linear(in*n, out), taking turns in
this one process (the input needs a gradient, as in a hidden layer), and reports each path as the median
over turns of its ratio to the Linear, the faster path, and the one ``path = "auto"`` picks
(piecewise.dense_pays, reduced.reduced_pays, piecewise.KINKS_MAX_SEGMENTS). These are the measurements
behind those rules. The reduced basis (reduced.py: the dense path's matmul with one column fewer per input)
is timed too, and so are continuous layers with n = 2 on the kink basis (kinks.py); at this size they take
the dense path's place. --width and --batch change the layer's size and the batch (the rules for the
reduced and kink bases depend on both: a call's work decides whether their per-call conversion of the
weights pays), --inference times forward passes without autograd instead (as evaluation runs them; the
reduced basis has its own threshold there), --case runs only the cases given. Prints a table; writes JSON
{"rows": [...]} to --out (default benchmarks/results/paths.json). Needs the compiled CPU kernel.
"""

import argparse
import statistics
from pathlib import Path

import torch
from layers import BATCH, forward_of, markdown, pass_of, save, turns_ms
from torch import nn

from langinterp.heap import keep_freed_memory
from langinterp.layers import HighOrderLinear, kernel

WIDTH = 250
PATHS = ("dense", "reduced", "kinks", "kernel")
CASES = [
    ("continuous", 2, 2),
    ("continuous", 3, 2),
    ("continuous", 5, 2),
    ("discontinuous", 1, 2),
    ("continuous", 2, 3),
    ("discontinuous", 2, 2),
    ("discontinuous", 3, 2),
    ("continuous", 2, 4),
    ("continuous", 4, 3),
    ("continuous", 3, 4),
    ("discontinuous", 1, 3),
    ("continuous", 5, 4),
    ("discontinuous", 1, 4),
    ("continuous", 2, 7),
    ("discontinuous", 1, 8),
]


def measure(
    kind: str,
    n: int,
    segments: int,
    threads: int,
    repeats: int,
    width: int = WIDTH,
    batch: int = BATCH,
    inference: bool = False,
) -> dict:
    """One row; ``inference``: forward passes without autograd instead of forward+backward."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = (torch.rand(batch, width) * 2 - 1).requires_grad_(not inference)
    step_of = forward_of if inference else pass_of
    timed = [path for path in PATHS if path != "kinks" or (kind == "continuous" and n == 2)]
    steps = {}
    for path in timed:
        layer = HighOrderLinear(width, width, n, segments, kind=kind)
        layer.path = path
        steps[path] = step_of(layer, x)
    wide = torch.randn(batch, width * n, requires_grad=not inference)
    steps["linear"] = step_of(nn.Linear(width * n, width, bias=False), wide)
    turns = turns_ms(steps, repeats, 3)
    layer.path = "auto"
    row = {"kind": kind, "n": n, "segments": segments, "K": layer.weights_per_link, "threads": threads}
    row["width"], row["batch"], row["inference"] = width, batch, inference
    row["linear_ms"] = statistics.median(turns["linear"])
    row["kinks_ms"] = row["kinks_ratio"] = None
    for path in timed:
        row[f"{path}_ms"] = statistics.median(turns[path])
        row[f"{path}_ratio"] = statistics.median(
            a / b for a, b in zip(turns[path], turns["linear"], strict=True)
        )
    row["faster"] = min(timed, key=lambda path: row[f"{path}_ratio"])
    with torch.set_grad_enabled(not inference):
        row["auto"] = layer.choose_path(x)
    return row


def table(rows: list[dict]) -> str:
    header = ["kind", "n", "segments", "K", "K/n", "threads", "Linear(in*n) ms"]
    header += [f"{path} / Linear" for path in PATHS] + ["faster", "auto"]

    def row(r: dict) -> list:
        ratios = ["-" if r[f"{path}_ratio"] is None else f"{r[f'{path}_ratio']:.2f}" for path in PATHS]
        sizes = [r["kind"], r["n"], r["segments"], r["K"], f"{r['K'] / r['n']:.2f}", r["threads"]]
        return [*sizes, f"{r['linear_ms']:.2f}", *ratios, r["faster"], r["auto"]]

    return markdown(header, [row(r) for r in rows])


def parse_case(text: str) -> tuple[str, int, int]:
    """KIND:N:SEGMENTS -> (kind, n, segments), refused with the reason when it is no layer."""
    try:
        kind, n, segments = text.split(":")
        case = kind, int(n), int(segments)
        HighOrderLinear(1, 1, case[1], case[2], kind=kind)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return case


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns; about a minute on 2 cores")
    parser.add_argument("--width", type=int, default=WIDTH, help="the layers' inputs and outputs")
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per call")
    parser.add_argument(
        "--inference", action="store_true", help="time forward passes without autograd (as in evaluation)"
    )
    parser.add_argument(
        "--case", type=parse_case, action="append", help="KIND:N:SEGMENTS, e.g. continuous:5:2 (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "paths.json"
    )
    args = parser.parse_args()
    if not kernel.available():
        parser.error("the compiled CPU kernel is not available (no C++ compiler, or LANGINTERP_KERNEL=0)")
    all_threads = torch.get_num_threads()
    rows = [
        measure(kind, n, segments, threads, 5 if args.quick else 21, args.width, args.batch, args.inference)
        for kind, n, segments in args.case or CASES
        for threads in sorted({1, all_threads})
    ]
    torch.set_num_threads(all_threads)
    passes = "forward passes without autograd" if args.inference else "forward+backward"
    print(f"{passes}, batch {args.batch}, {args.width} inputs and outputs")
    print(table(rows))
    save(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
