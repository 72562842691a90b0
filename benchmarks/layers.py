"""Speed and memory of the high-order layers against nn.Linear and high-order-layers-torch.

    python benchmarks/layers.py [--quick] [--passes] [--device cpu|cuda] [--path P] [--segments S ...]
                                [--out FILE]

For every case (in, out, n, segments) at batch 1024, on the CPU with one thread and with all threads (or,
with --device cuda, once on the GPU, where the layers take their Triton path), it times a
forward+backward pass (median of repeated runs after warm-up, taking turns, in this one process) of our
layer, of nn.Linear(in, out), of nn.Linear(in*n, out) (the same multiply-adds as ours) and of
high-order-layers-torch, and the peak memory each allocates (tensor allocations seen by the torch profiler
during one pass; ours includes the weight gradient, as large as the weights, reported as ``weight_mib``).
Input-layer cases need no gradient for their inputs; hidden-layer cases do. The column ours / Linear(in*n)
is the median over turns of that turn's ratio.

high-order-layers-torch builds a [batch, in, out, n] copy of its weights per call (seconds per pass at
batch 1024), so it is run at a smaller batch (``hol_batch``: 128, or 32 with --quick) and its time and
memory are scaled linearly to 1024, which is how that copy grows. Prints a table; writes JSON
{"rows": [...]} to --out (default benchmarks/results/layers.json).

--passes also times each pass alone, ours against nn.Linear(in*n, out): the forward pass (no autograd
graph), dL/dx (the weights frozen), dL/dW (the input needing no gradient) and, where there is a dL/dx, the
backward pass that computes both (a hidden layer's in training), the backward passes timed without the
forward pass that precedes them; a second table, and {"passes": [...]} in the JSON. It shows where the gap
to a matmul lies.

--path forces the path of our hidden and real-valued input layers (HighOrderLinear.path: dense, reduced,
kinks, kernel, triton, gather; see langinterp/layers/piecewise.py) instead of the one it would choose, to
compare them on the same cases; the layer over character codes has no such choice and is left out. Every
row records the path that ran. --segments keeps only the cases with those segment counts.
"""

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from langinterp.heap import keep_freed_memory
from langinterp.layers import (
    CharacterInput,
    HighOrderLinear,
    codes_to_unit,
    kernel,
    triton_ops,
    weights_per_link,
)
from langinterp.layers.piecewise import PATHS

# The profiler behind peak_mib logs two lines to stderr for every profiled call (Kineto's "USDT ...
# profiler_start/stop"), dozens per run, burying the tables; level 6 is above all of Kineto's own levels.
# Read when the profiler first starts, so setting it here is in time.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

BATCH = 1024
CASES = [
    ("input codes", 16, 250, 2, 128),
    ("input real", 16, 250, 2, 128),
    ("hidden", 250, 250, 2, 2),
    ("hidden", 250, 250, 3, 8),
    ("hidden", 250, 250, 5, 2),
    ("hidden", 250, 250, 2, 32),
    ("hidden", 128, 128, 2, 128),
]


def turns_ms(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time of each step in ms, per turn. The steps take turns, so that a burst of load from elsewhere on a
    shared machine falls on all of them alike and their ratios stay meaningful."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def median_ms(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    """Median time of each step in ms (see turns_ms)."""
    return {name: statistics.median(t) for name, t in turns_ms(steps, repeats, warmup).items()}


def median_ratio(top: list[float], bottom: list[float]) -> float:
    """The median of the turn-by-turn ratios top / bottom: steadier than a ratio of medians when the load from
    elsewhere changes between turns."""
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def synchronized(step: Callable[[], None]) -> Callable[[], None]:
    """The step, returning only once the GPU has finished it (CUDA runs asynchronously)."""

    def run() -> None:
        step()
        torch.cuda.synchronize()

    return run


def peak_mib(step: Callable[[], None], device: str = "cpu") -> float:
    """Largest total of live tensor allocations made during one call of ``step``, in MiB."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.time_range.start, e.cpu_memory_usage)
        for e in prof.events()
        if e.cpu_memory_usage and not e.cpu_children
    )
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak / 2**20


def pass_of(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward+backward of module on x, then dropping the gradients.

    Dropped at the end rather than the start, so that every pass, the profiled one included, begins without
    gradients: freeing the previous pass's inside the profiled one would count as a negative allocation when
    the profiler knows that block and not when it does not, which made the peak move by the size of the
    weights from run to run.
    """

    def step() -> None:
        module(x).sum().backward()
        module.zero_grad(set_to_none=True)
        x.grad = None

    return step


def layer_and_input(case: tuple, device: str, path: str = "auto") -> tuple[nn.Module, torch.Tensor]:
    """Our layer for a case, on ``path`` (a HighOrderLinear's; the layer over codes has none), and a batch
    for it: character codes for the input layer over codes, else reals in [-1, 1)."""
    name, inputs, outputs, n, segments = case
    if name == "input codes":
        if path != "auto":
            raise ValueError(f"the input layer over character codes has no path to force, got {path!r}")
        return (
            CharacterInput(inputs, outputs, n, segments).to(device),
            torch.randint(0, 128, (BATCH, inputs), device=device),
        )
    layer = HighOrderLinear(inputs, outputs, n, segments).to(device)
    layer.path = path
    return layer, torch.rand(BATCH, inputs, device=device) * 2 - 1


def path_taken(layer: nn.Module, x: torch.Tensor) -> str:
    """The path our layer takes on x: a HighOrderLinear's choice, or ``codes`` for the layer over codes."""
    return layer.choose_path(x) if isinstance(layer, HighOrderLinear) else "codes"


def forward_of(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """The forward pass alone, with no autograd graph."""

    def step() -> None:
        with torch.no_grad():
            module(x)

    return step


def backward_ms(module: nn.Module, x: torch.Tensor, wrt: str, repeats: int, warmup: int) -> float:
    """Median time in ms of one backward pass that computes only dL/dx (wrt "input": the weights frozen),
    only dL/dW (wrt "weight": x needs no gradient) or both (wrt "both"); the forward pass before each is not
    timed."""
    weights = list(module.parameters())
    leaf = x.detach().requires_grad_(wrt in ("input", "both"))
    for weight in weights:
        weight.requires_grad_(wrt in ("weight", "both"))
    times = []
    try:
        for i in range(warmup + repeats):
            y = module(leaf)
            grad = torch.ones_like(y)
            if y.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            y.backward(grad)
            if y.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
            module.zero_grad(set_to_none=True)
            leaf.grad = None
    finally:
        for weight in weights:
            weight.requires_grad_(True)
    return statistics.median(times)


def measure_passes(case: tuple, threads: int, quick: bool, device: str = "cpu", path: str = "auto") -> dict:
    """Each pass of our layer and of nn.Linear(in*n, out) alone (see the module docstring)."""
    name, inputs, outputs, n, segments = case
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    repeats, warmup = (5, 2) if quick else (15, 3)
    ours, x = layer_and_input(case, device, path)
    linear, wide = (
        nn.Linear(inputs * n, outputs, bias=False).to(device),
        torch.randn(BATCH, inputs * n, device=device),
    )
    forward = {"ours": forward_of(ours, x), "linear": forward_of(linear, wide)}
    if device == "cuda":
        forward = {key: synchronized(step) for key, step in forward.items()}
    row = {
        "case": name,
        "in": inputs,
        "out": outputs,
        "n": n,
        "segments": segments,
        "threads": threads,
        "device": device,
        "path": path_taken(ours, x),
    }
    forward_ms = median_ms(forward, repeats, warmup)
    row["forward_ms"], row["linear_forward_ms"] = forward_ms["ours"], forward_ms["linear"]
    # Character codes are integers: the input layer over codes has no dL/dx.
    for wrt, key in (("input", "grad_input"), ("weight", "grad_weight"), ("both", "grad_both")):
        takes = name != "input codes" or wrt == "weight"
        row[f"{key}_ms"] = backward_ms(ours, x, wrt, repeats, warmup) if takes else None
        row[f"linear_{key}_ms"] = backward_ms(linear, wide, wrt, repeats, warmup)
    return row


def oracle(n: int, inputs: int, outputs: int, segments: int, device: str) -> nn.Module | None:
    try:
        from high_order_layers_torch.PolynomialLayers import PiecewisePolynomial
    except ImportError:
        return None
    return PiecewisePolynomial(n, inputs, outputs, segments, device=device)


def measure(case: tuple, threads: int, quick: bool, device: str = "cpu", path: str = "auto") -> dict:
    name, inputs, outputs, n, segments = case
    kind = "continuous"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    repeats, warmup = (5, 2) if quick else (15, 3)
    hidden = name == "hidden"
    layer, layer_input = layer_and_input(case, device, path)
    # The Linear layers read the codes' values; the input of a hidden layer needs a gradient.
    x = codes_to_unit(layer_input) if name == "input codes" else layer_input.requires_grad_(hidden)
    ours = pass_of(layer, layer_input)
    wide = torch.randn(BATCH, inputs * n, device=device, requires_grad=hidden)
    steps = {
        "ours": ours,
        "linear": pass_of(nn.Linear(inputs, outputs, bias=False).to(device), x),
        "linear_in_n": pass_of(nn.Linear(inputs * n, outputs, bias=False).to(device), wide),
    }
    if device == "cuda":
        steps = {key: synchronized(step) for key, step in steps.items()}
    row = {
        "case": name, "in": inputs, "out": outputs, "n": n, "segments": segments, "threads": threads,
        "device": device, "path": path_taken(layer, layer_input),
    }  # fmt: skip
    turns = turns_ms(steps, repeats, warmup)
    for key, milliseconds in turns.items():
        row[f"{key}_ms"] = statistics.median(milliseconds)
    row["ratio"] = median_ratio(turns["ours"], turns["linear_in_n"])
    row["ours_peak_mib"] = peak_mib(steps["ours"], device)
    row["weight_mib"] = inputs * weights_per_link(kind, n, segments) * outputs * 4 / 2**20
    hol_batch = 32 if quick else 128
    row["hol_batch"] = hol_batch
    row["hol_ms"] = row["hol_peak_mib"] = None
    # The package makes its nodes when built and more constants in every call, all on the default device.
    with torch.device(device):
        theirs = oracle(n, inputs, outputs, segments, device)
        if theirs is not None:
            small = x[:hol_batch].detach().clone().requires_grad_(hidden)
            scale = BATCH / hol_batch
            step = pass_of(theirs, small)
            if device == "cuda":
                step = synchronized(step)
            row["hol_ms"] = scale * median_ms({"hol": step}, 1 if quick else 3, 1)["hol"]
            row["hol_peak_mib"] = scale * peak_mib(step, device)
    return row


def markdown(header: list[str], rows: list[list]) -> str:
    """A markdown table: the header's cells, then one line of cells per row (the benchmarks' tables)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def case_table(columns: str, rows: list[dict], cells: Callable[[dict], list[str]]) -> str:
    """A markdown table of cases: each row's case, sizes and threads (or GPU), then its ``cells``, under the
    case columns and ``columns`` ("a | b | ...")."""
    header = ["case", "in", "out", "n", "segments", "threads", *columns.split(" | ")]

    def row(r: dict) -> list:
        threads = r["threads"] if r["device"] == "cpu" else "GPU"
        return [r["case"], r["in"], r["out"], r["n"], r["segments"], threads, *cells(r)]

    return markdown(header, [row(r) for r in rows])


def table(rows: list[dict]) -> str:
    def cells(r: dict) -> list[str]:
        hol, hol_mib = r["hol_ms"], r["hol_peak_mib"]
        return [
            f"{r['ours_ms']:.2f}",
            f"{r['linear_ms']:.2f}",
            f"{r['linear_in_n_ms']:.2f}",
            "-" if hol is None else f"{hol:.0f}",
            f"{r['ratio']:.2f}",
            "-" if hol is None else f"{hol / r['ours_ms']:.0f}",
            f"{r['ours_peak_mib']:.1f}",
            f"{r['weight_mib']:.1f}",
            "-" if hol_mib is None else f"{hol_mib:.0f}",
        ]

    columns = (
        "ours ms | Linear(in) ms | Linear(in*n) ms | hol ms | ours / Linear(in*n) | hol / ours | ours MiB "
        "| weights MiB | hol MiB"
    )
    return case_table(columns, rows, cells)


def passes_table(rows: list[dict]) -> str:
    def pair(r: dict, key: str) -> tuple[str, str]:
        ours, theirs = r[f"{key}_ms"], r[f"linear_{key}_ms"]
        if ours is None:
            return "-", "-"
        return f"{ours:.2f} ({theirs:.2f})", f"{ours / theirs:.2f}"

    def cells(r: dict) -> list[str]:
        pairs = [pair(r, key) for key in ("forward", "grad_input", "grad_weight", "grad_both")]
        return [times for times, _ in pairs] + [ratio for _, ratio in pairs]

    columns = (
        "forward ms (Linear) | dL/dx ms (Linear) | dL/dW ms (Linear) | both ms (Linear) | forward / Linear "
        "| dL/dx / Linear | dL/dW / Linear | both / Linear"
    )
    return case_table(columns, rows, cells)


def path_problem(path: str, device: str) -> str | None:
    """Why ``path`` cannot be forced on ``device`` in this process, or None when it can."""
    if path in ("kernel", "reduced") and (device != "cpu" or not kernel.available()):
        return f"--path {path} needs --device cpu and the compiled CPU kernel"
    if path == "triton" and (device != "cuda" or not triton_ops.available()):
        return "--path triton needs --device cuda and Triton"
    return None


def save(out: Path, result: dict) -> None:
    """The benchmark's JSON into ``out`` (its folder made first), and a line saying where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def chosen_cases(segments: list[int] | None, path: str) -> list[tuple]:
    """The cases to run: those with one of ``segments`` (all when None), less the layer over codes when a
    path is forced, and only those with n = 2 for the kink basis (the layers are continuous)."""
    return [
        case
        for case in CASES
        if (segments is None or case[4] in segments)
        and (path == "auto" or case[0] != "input codes")
        and (path != "kinks" or case[3] == 2)
    ]


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; under a minute on 2 cores")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "layers.json"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the layers run")
    parser.add_argument("--passes", action="store_true", help="also time each pass alone against a Linear's")
    parser.add_argument("--path", choices=PATHS, default="auto", help="force our layers' path")
    parser.add_argument("--segments", type=int, nargs="+", help="only the cases with these segment counts")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU, and torch sees none")
    if problem := path_problem(args.path, args.device):
        parser.error(problem)
    cases = chosen_cases(args.segments, args.path)
    if not cases:
        parser.error("no case has those segment counts")
    all_threads = torch.get_num_threads()
    counts = sorted({1, all_threads}) if args.device == "cpu" else [all_threads]
    if args.path != "auto":
        print(f"path forced: {args.path}")
    rows = [
        measure(case, threads, args.quick, args.device, args.path) for case in cases for threads in counts
    ]
    result = {"rows": rows}
    print(table(rows))
    if args.passes:
        result["passes"] = [
            measure_passes(case, threads, args.quick, args.device, args.path)
            for case in cases
            for threads in counts
        ]
        print()
        print(passes_table(result["passes"]))
    torch.set_num_threads(all_threads)
    save(args.out, result)


if __name__ == "__main__":
    main()
