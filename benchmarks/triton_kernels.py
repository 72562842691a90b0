"""The layers' Triton kernels on a GPU, each launch alone, against the matmul of the same multiply-adds.

    python benchmarks/triton_kernels.py [--batches 1024 16384] [--out FILE]

Needs CUDA. For each case (in, out, n, segments) of benchmarks/layers.py that takes the Triton path (K
above the dense path's limit), and (250, 250, 5, 8) for n = 5, at each batch, it times with
``triton.testing.do_bench`` (GPU time of each call, the op's own allocations included):

- the forward kernel with one input per step and with ``triton_ops.most_inputs_per_step(n)`` (which
  inputs_per_step picks only for grids of at most two programs per multiprocessor), against x @ W for
  x [batch, in*n], W [in*n, out];
- dL/dW by the atomic kernel and by the dense kernel (triton_ops picks the dense one for K <= 64), in
  float32, against x^T @ g; with each one's largest error against the dense kernel in float64, relative
  to the largest entry.

Prints a table; writes JSON {"forward": [...], "grad_weight": [...]} to --out (default
benchmarks/results/triton_kernels.json). These are the measurements behind triton_ops' two choices.
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from langinterp.heap import keep_freed_memory
from langinterp.layers import triton_ops, weights_per_link

CASES = [(16, 250, 2, 128), (250, 250, 3, 8), (250, 250, 2, 32), (128, 128, 2, 128), (250, 250, 5, 8)]


def bench_ms(step: Callable[[], object], device: str) -> float:
    """Milliseconds per call: kernel time by do_bench on a GPU; elsewhere (Triton's interpreter, how the
    tests run this file) the median of a few timed calls."""
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(step, warmup=25, rep=100)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def forward_row(rows: int, inputs: int, outputs: int, n: int, segments: int, device: str = "cuda") -> dict:
    K = weights_per_link("continuous", n, segments)
    torch.manual_seed(0)
    weight = torch.randn(inputs, K, outputs, device=device)
    x = torch.rand(rows, inputs, device=device) * 2.2 - 1.1
    grid = (
        triton_ops._tiles(rows, triton_ops.ROWS_PER_PROGRAM),
        triton_ops._tiles(outputs, triton_ops.OUTPUTS_PER_PROGRAM),
    )
    most = triton_ops.most_inputs_per_step(n)
    row = {"rows": rows, "in": inputs, "out": outputs, "n": n, "segments": segments}
    row.update(programs=grid[0] * grid[1], most_inputs_per_step=most)
    results = {}
    for steps in sorted({1, most}):
        y = torch.empty(rows, outputs, device=device)

        def launch(steps: int = steps, y: torch.Tensor = y) -> None:
            tensors, table = [x, weight, y], (weight.shape, weight.dtype)
            triton_ops._launch("forward", grid, tensors, rows, *table, n, segments, n - 1, BI=steps)

        launch()
        results[steps] = y
        row[f"inputs_per_step_{steps}_ms"] = bench_ms(launch, device)
    row["same_bits"] = all(torch.equal(results[1], y) for y in results.values())
    wide = torch.randn(rows, inputs * n, device=device)
    table = torch.randn(inputs * n, outputs, device=device)
    row["matmul_ms"] = bench_ms(lambda: wide @ table, device)
    return row


def grad_weight_row(
    rows: int, inputs: int, outputs: int, n: int, segments: int, device: str = "cuda"
) -> dict:
    K = weights_per_link("continuous", n, segments)
    torch.manual_seed(1)
    x = torch.rand(rows, inputs, device=device) * 2.2 - 1.1
    grad = torch.randn(rows, outputs, device=device)
    row = {"rows": rows, "in": inputs, "out": outputs, "n": n, "segments": segments, "K": K}
    limit = triton_ops.DENSE_GRAD_WEIGHT_MAX_K

    def gradient(dtype: torch.dtype, dense: bool) -> torch.Tensor:
        weight = torch.empty(inputs, K, outputs, device=device, dtype=dtype)
        triton_ops.DENSE_GRAD_WEIGHT_MAX_K = K if dense else 0
        try:
            return triton_ops.piecewise_grad_weight(x.to(dtype), grad.to(dtype), weight, n, segments, n - 1)
        finally:
            triton_ops.DENSE_GRAD_WEIGHT_MAX_K = limit

    exact = gradient(torch.float64, dense=True)
    scale = exact.abs().max().item()
    for name, dense in (("atomic", False), ("dense", True)):
        row[f"{name}_error"] = (gradient(torch.float32, dense).double() - exact).abs().max().item() / scale
        row[f"{name}_ms"] = bench_ms(lambda dense=dense: gradient(torch.float32, dense), device)
    wide = torch.randn(inputs * n, rows, device=device)
    row["matmul_ms"] = bench_ms(lambda: wide @ grad, device)
    return row


def tables(forward: list[dict], grad_weight: list[dict]) -> str:
    lines = [
        "| batch | in | out | n | segments | programs | forward ms, 1 input per step | forward ms, 8 // n "
        "| matmul ms | same bits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in forward:
        many = r[f"inputs_per_step_{r['most_inputs_per_step']}_ms"]
        lines.append(
            f"| {r['rows']} | {r['in']} | {r['out']} | {r['n']} | {r['segments']} | {r['programs']} "
            f"| {r['inputs_per_step_1_ms']:.3f} | {many:.3f} | {r['matmul_ms']:.3f} | {r['same_bits']} |"
        )
    lines += [
        "",
        "| batch | in | out | n | segments | K | dL/dW ms, atomic | dL/dW ms, dense | matmul ms "
        "| error, atomic | error, dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in grad_weight:
        lines.append(
            f"| {r['rows']} | {r['in']} | {r['out']} | {r['n']} | {r['segments']} | {r['K']} "
            f"| {r['atomic_ms']:.3f} | {r['dense_ms']:.3f} | {r['matmul_ms']:.3f} "
            f"| {r['atomic_error']:.1e} | {r['dense_error']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 16384], help="rows per launch")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/triton_kernels.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: benchmarks/triton_kernels.py needs a CUDA GPU, and torch sees none")
    if not triton_ops.available():
        sys.exit("error: benchmarks/triton_kernels.py needs Triton, which is not installed")
    cases = [(rows, *case) for rows in args.batches for case in CASES]
    forward = [forward_row(*case) for case in cases]
    grad_weight = [grad_weight_row(*case) for case in cases]
    print(tables(forward, grad_weight))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"forward": forward, "grad_weight": grad_weight}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
