"""The layers' eager calls against the same calls through the custom ops' dispatcher.

    python benchmarks/dispatch.py [--quick] [--device cpu|cuda] [--out FILE]

For every case of benchmarks/layers.py at batch 1024 (on the CPU with one thread and with all threads, or
once on the GPU), it times a forward+backward pass of our layer as it runs (its kernel passes through a
plain autograd.Function, layers/eager.py), the same pass with every call routed through the custom ops
instead (``eager.through_custom_ops``: the dispatcher, the ops' autograd wrapper and their gradient ops, as
torch.compile sees them), and nn.Linear(in*n, out). Where the layer runs the CPU kernel (the kernel path,
or the passes over codes) it also times the kernel's passes that step makes, called directly: no module,
no autograd, no copy of dL/dy, the floor under the eager route. They all take turns in one process; each
ratio is the median of the turn-by-turn ratios. Layers whose path runs no custom op (the kink basis) time
the same code twice, which shows the noise. Prints a table; writes JSON {"rows": [{"case", "in", "out",
"n", "segments", "threads", "device", "path", "eager_ms", "ops_ms", "linear_in_n_ms", "kernel_ms",
"eager_over_ops", "eager_over_linear", "ops_over_linear", "kernel_over_linear", "eager_over_kernel"}]}
(the kernel's entries null where it does not run) to --out (default benchmarks/results/dispatch.json).
"""

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from layers import (
    BATCH,
    CASES,
    case_table,
    layer_and_input,
    median_ratio,
    pass_of,
    path_taken,
    save,
    synchronized,
    turns_ms,
)
from torch import nn

from langinterp.heap import keep_freed_memory
from langinterp.layers import kernel
from langinterp.layers.basis import stride
from langinterp.layers.eager import through_custom_ops


def routed_through_ops(step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with through_custom_ops():
            step()

    return run


# The row's entries about the kernel's passes alone: None where the layer runs no CPU kernel.
KERNEL_ALONE = ("kernel_ms", "kernel_over_linear", "eager_over_kernel")


def kernel_passes(layer: nn.Module, x: torch.Tensor, path: str) -> Callable[[], None] | None:
    """The CPU kernel's passes of one training step of ``layer`` on x, called directly: the forward pass
    and the backward passes the layer's step takes (both gradients when x needs one, else dL/dW), on a
    contiguous dL/dy of ones (the step's, from a sum); None where the layer does not run the CPU kernel."""
    if path not in ("kernel", "codes"):
        return None
    weight = layer.weight.detach()
    n, segments, step = layer.n, layer.segments, stride(layer.kind, layer.n)
    grad = torch.ones(x.shape[0], layer.out_features)
    if path == "codes":
        codes = x.to(torch.uint8)

        def run_codes() -> None:
            kernel.run_codes_pass("codes_forward", codes, weight, None, n, segments, step)
            kernel.run_codes_pass("codes_grad_weight", codes, weight, grad, n, segments, step)

        return run_codes
    flat = x.detach()

    def run() -> None:
        kernel.run_pass("forward", flat, weight, None, n, segments, step)
        if x.requires_grad:
            kernel.run_grad_both(flat, weight, grad, n, segments, step)
        else:
            kernel.run_pass("grad_weight", flat, weight, grad, n, segments, step)

    return run


def measure(case: tuple, threads: int, quick: bool, device: str) -> dict:
    name, inputs, outputs, n, segments = case
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hidden = name == "hidden"
    layer, x = layer_and_input(case, device)
    x.requires_grad_(hidden)
    wide = torch.randn(BATCH, inputs * n, device=device, requires_grad=hidden)
    eager = pass_of(layer, x)
    steps = {
        "eager": eager,
        "ops": routed_through_ops(eager),
        "linear_in_n": pass_of(nn.Linear(inputs * n, outputs, bias=False).to(device), wide),
    }
    path = path_taken(layer, x)
    alone = kernel_passes(layer, x, path)
    if alone is not None:
        steps["kernel"] = alone
    if device == "cuda":
        steps = {key: synchronized(step) for key, step in steps.items()}
    repeats, warmup = (7, 2) if quick else (41, 3)
    turns = turns_ms(steps, repeats, warmup)
    row = {
        "case": name, "in": inputs, "out": outputs, "n": n, "segments": segments, "threads": threads,
        "device": device, "path": path,
    }  # fmt: skip
    row.update(dict.fromkeys(KERNEL_ALONE))
    for key, milliseconds in turns.items():
        row[f"{key}_ms"] = statistics.median(milliseconds)
    row["eager_over_ops"] = median_ratio(turns["eager"], turns["ops"])
    row["eager_over_linear"] = median_ratio(turns["eager"], turns["linear_in_n"])
    row["ops_over_linear"] = median_ratio(turns["ops"], turns["linear_in_n"])
    if alone is not None:
        row["kernel_over_linear"] = median_ratio(turns["kernel"], turns["linear_in_n"])
        row["eager_over_kernel"] = median_ratio(turns["eager"], turns["kernel"])
    return row


def table(rows: list[dict]) -> str:
    def cells(r: dict) -> list[str]:
        return [
            r["path"],
            f"{r['eager_ms']:.2f}",
            f"{r['ops_ms']:.2f}",
            f"{r['linear_in_n_ms']:.2f}",
            f"{r['eager_over_ops']:.3f}",
            f"{r['eager_over_linear']:.2f}",
            f"{r['ops_over_linear']:.2f}",
            *("-" if r[key] is None else f"{r[key]:.2f}" for key in KERNEL_ALONE),
        ]

    columns = (
        "path | eager ms | through ops ms | Linear(in*n) ms | eager / ops | eager / Linear(in*n) "
        "| ops / Linear(in*n) | kernel alone ms | kernel alone / Linear(in*n) | eager / kernel alone"
    )
    return case_table(columns, rows, cells)


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer turns; well under a minute on 2 cores")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the layers run")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "dispatch.json"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU, and torch sees none")
    all_threads = torch.get_num_threads()
    counts = sorted({1, all_threads}) if args.device == "cpu" else [all_threads]
    rows = [measure(case, threads, args.quick, args.device) for case in CASES for threads in counts]
    torch.set_num_threads(all_threads)
    print(table(rows))
    save(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
