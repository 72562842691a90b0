"""The piecewise layers' CUDA path: the Triton kernels of triton_kernels.py as torch ops.

Why: elsewhere than the CPU the exact pure-PyTorch fallback is embedding_bag with per-sample weights, which
first builds [rows, in*n] tensors of row indices and basis values (and, for dL/dx, autograd's graph through
the basis), and whose backward goes through embedding_bag's generic sparse gradient. The kernels instead
locate each input's segment, evaluate its basis and gather its n weight rows in one pass per direction
(forward, dL/dx, dL/dW), so time and memory stay those of a Linear(in*n, out) whatever the segments.

dL/dW has two kernels, chosen by K (measured on an H200: benchmarks/triton_kernels.py, benchmarks/README.md):
- K <= DENSE_GRAD_WEIGHT_MAX_K: ``grad_weight_dense``, one program per input and block of outputs, adding
  basis^T @ g by tl.dot over all rows: no atomic adds, the same result in every run, and 1.9-7.2x faster
  than the atomic kernel there (rows that share a segment fight over the same entries);
- larger K: ``grad_weight``, atomic adds per row, whose float rounding can differ from run to run. Under
  ``torch.use_deterministic_algorithms(True)`` such layers take the gather path instead (see ``supports``).
  Its warn-only form (``warn_only=True``, what Lightning's ``deterministic="warn"`` sets, and so what
  ``langinterp train`` runs under on a GPU) keeps the kernel, which warns once, as torch's own
  nondeterministic operations do there.
Float16, bfloat16 and float32 weights compute in float32 (dL/dW accumulates in float32), float64 in float64.

The dense path (small K, piecewise.py) has two kernels here as well: one writes its [rows, in*K] basis
matrix and one reads dL/dx back from that matrix's gradient. In PyTorch operations the basis took a dozen
kernel launches per direction, and on an H200 the dense path's forward pass cost 12x the matmul's
(benchmarks/README.md): at batch 1024 the launches, not the arithmetic, set the time.

Triton is imported only when a kernel first runs. With ``TRITON_INTERPRET=1`` set before that, Triton runs
the same kernels on CPU tensors in its interpreter: that is how the tests check them without a GPU.
"""

import contextlib
import importlib.util
import warnings
from functools import cache

import torch
from torch import Tensor

from .basis import chebyshev_lobatto
from .eager import eager_or_op
from .kernel import backward_with, basis_backward_with, basis_setup_context, setup_context

FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# A tile of 32 rows by 64 outputs per program, over 8 warps: compiled for sm_90, the float32 kernels then
# hold 64-128 registers per thread and spill none (tests/test_triton.py compiles them; with 4 warps the
# dL/dx kernel needs about 250).
ROWS_PER_PROGRAM = 32
OUTPUTS_PER_PROGRAM = 64
WARPS = 8


# The dense dL/dW kernel's largest K: at K <= 64 it beat the atomic kernel in every measured case, at
# K = 129 it lost (benchmarks/triton_kernels.py on an H200, benchmarks/README.md).
DENSE_GRAD_WEIGHT_MAX_K = 64


def most_inputs_per_step(n: int) -> int:
    """The forward kernel's inputs per step on small grids: about 8 weight tiles in flight, which compiled
    for sm_90 stay within the registers (tests/test_triton.py)."""
    return max(1, 8 // n)


def inputs_per_step(n: int, programs: int, device: torch.device) -> int:
    """The forward kernel's inputs per step (see triton_kernels.forward).

    Several inputs per step overlap their memory latencies inside a program but take more registers. That
    pays while the grid leaves the GPU idle, at most two programs per multiprocessor, and lost up to 1.7x
    on fuller grids (measured, benchmarks/README.md), where the programs hide each other's latency.
    """
    if device.type == "cuda" and programs > 2 * _multiprocessors(device):
        return 1
    return most_inputs_per_step(n)


@cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether Triton is installed (it comes with PyTorch's CUDA builds)."""
    return importlib.util.find_spec("triton") is not None


@torch.compiler.assume_constant_result
def strictly_deterministic() -> bool:
    """Whether torch's deterministic mode is on and raises (rather than warns) on nondeterministic work."""
    return torch.are_deterministic_algorithms_enabled() and not (
        torch.is_deterministic_algorithms_warn_only_enabled()
    )


def repeatable(weight: Tensor) -> bool:
    """Whether dL/dW of this weight [in, K, out] takes the dense kernel, which adds in a fixed order."""
    return weight.shape[1] <= DENSE_GRAD_WEIGHT_MAX_K


def supports_dense(x: Tensor, weight: Tensor) -> bool:
    """Whether the dense path can build its basis and dL/dx with Triton: CUDA, a float type, Triton. Both
    kernels write every entry once, with no atomic adds, so every deterministic mode allows them."""
    return (
        x.device.type == "cuda"
        and weight.device.type == "cuda"
        and weight.dtype in FLOAT_TYPES
        and available()
    )


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether the Triton path handles these tensors: as for the dense path's kernels, and nondeterminism
    allowed unless dL/dW is repeatable."""
    return supports_dense(x, weight) and (repeatable(weight) or not strictly_deterministic())


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@cache
def _basis_constants(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The n nodes and the inverse Lagrange denominators 1 / prod_{m != k} (X_k - X_m), on the device."""
    nodes = chebyshev_lobatto(n)
    inverse = torch.stack(
        [1 / torch.prod(nodes[k] - torch.cat([nodes[:k], nodes[k + 1 :]])) for k in range(n)]
    )
    return nodes.to(device, dtype), inverse.to(device, dtype)


def _launch(name: str, grid: tuple[int, ...], tensors: list[Tensor], rows: int, shape: tuple[int, int, int],
            dtype: torch.dtype, n: int, segments: int, step: int, **blocks: int) -> None:  # fmt: skip
    """Kernel ``name`` over ``rows`` rows of a weight table of ``shape`` (in, K, out) and type ``dtype``."""
    import triton.language as tl

    from . import triton_kernels

    inputs, K, outputs = shape
    compute = _compute_dtype(dtype)
    device = tensors[0].device
    nodes, inverse = _basis_constants(n, compute, device)
    # Triton launches on the current CUDA device: make it the tensors' one.
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        getattr(triton_kernels, name)[grid](
            *tensors, nodes, inverse, rows, inputs, outputs, K, segments,
            STRIDE=step, N=n, ACC=tl.float64 if compute == torch.float64 else tl.float32,
            **{"BR": ROWS_PER_PROGRAM, "BO": OUTPUTS_PER_PROGRAM, **blocks}, num_warps=WARPS,
        )  # fmt: skip


def _tiles(count: int, size: int) -> int:
    return -(-count // size)


def _piecewise(x: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """y[r, o] = sum_i sum_k phi_k(t_ri) weight[i, j_ri * step + k, o]; x [rows, in], weight [in, K, out]."""
    x, weight = x.contiguous(), weight.contiguous()
    rows, outputs = x.shape[0], weight.shape[2]
    y = x.new_empty(rows, outputs, dtype=weight.dtype)  # the kernel writes every entry
    if rows:
        grid = (_tiles(rows, ROWS_PER_PROGRAM), _tiles(outputs, OUTPUTS_PER_PROGRAM))
        steps = inputs_per_step(n, grid[0] * grid[1], x.device)
        _launch("forward", grid, [x, weight, y], rows, weight.shape, weight.dtype, n, segments, step,
                BI=steps)  # fmt: skip
    return y


piecewise = torch.library.custom_op("langinterp::piecewise_triton", _piecewise, mutates_args=())


@piecewise.register_fake
def _(x: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[2], dtype=weight.dtype)


def _piecewise_grad_input(
    x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int
) -> Tensor:
    """dL/dx = dt/dx sum_k phi_k'(t) <weight row, grad>."""
    x, grad, weight = x.contiguous(), grad.contiguous(), weight.contiguous()
    result = torch.empty_like(x)  # the kernel writes every entry
    if x.shape[0]:
        grid = (_tiles(x.shape[0], ROWS_PER_PROGRAM), x.shape[1])
        _launch("grad_input", grid, [x, weight, grad, result], x.shape[0], weight.shape, weight.dtype, n,
                segments, step)  # fmt: skip
    return result


piecewise_grad_input = torch.library.custom_op(
    "langinterp::piecewise_triton_grad_input", _piecewise_grad_input, mutates_args=()
)


@piecewise_grad_input.register_fake
def _(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _piecewise_grad_weight(
    x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int
) -> Tensor:
    """dL/dweight; ``weight`` supplies only the shape and type (the gradient is linear in phi)."""
    x, grad = x.contiguous(), grad.contiguous()
    inputs, K, outputs = weight.shape
    if not x.shape[0]:
        return torch.zeros_like(weight, memory_format=torch.contiguous_format)
    if repeatable(weight):
        result = torch.empty_like(weight, memory_format=torch.contiguous_format)  # every entry is written
        columns = max(16, 1 << (K - 1).bit_length())  # tl.dot's sides are powers of two, at least 16
        rows = max(16, min(64, 2048 // columns))  # the [rows, columns] basis tile stays in registers
        grid = (inputs, _tiles(outputs, OUTPUTS_PER_PROGRAM))
        _launch("grad_weight_dense", grid, [x, grad, result], x.shape[0], weight.shape, weight.dtype, n,
                segments, step, BR=rows, KP=columns)  # fmt: skip
        return result
    # Warn-only mode, or strict mode with the path forced (layer.path = "triton"): say what it costs.
    if torch.are_deterministic_algorithms_enabled():
        warnings.warn(
            f"the piecewise layers' Triton dL/dW adds atomically when K > {DENSE_GRAD_WEIGHT_MAX_K} and is "
            "not bit-for-bit repeatable; torch.use_deterministic_algorithms(True) without warn_only makes "
            "such layers take the gather path",
            UserWarning,
            stacklevel=1,
        )
    total = torch.zeros(weight.shape, dtype=_compute_dtype(weight.dtype), device=weight.device)
    grid = (_tiles(x.shape[0], ROWS_PER_PROGRAM), inputs, _tiles(outputs, OUTPUTS_PER_PROGRAM))
    _launch("grad_weight", grid, [x, grad, total], x.shape[0], weight.shape, weight.dtype, n, segments, step)
    return total.to(weight.dtype)


piecewise_grad_weight = torch.library.custom_op(
    "langinterp::piecewise_triton_grad_weight", _piecewise_grad_weight, mutates_args=()
)


@piecewise_grad_weight.register_fake
def _(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


piecewise.register_autograd(
    backward_with(piecewise_grad_input, piecewise_grad_weight), setup_context=setup_context
)


def _piecewise_basis(x: Tensor, K: int, n: int, segments: int, step: int) -> Tensor:
    """The dense path's [rows, in*K] basis matrix (kernel.piecewise_basis's, in one Triton kernel)."""
    x = x.contiguous()
    rows, inputs = x.shape
    basis = x.new_empty(rows, inputs * K)  # the kernel writes every entry
    if basis.numel():
        grid = (_tiles(rows, ROWS_PER_PROGRAM), _tiles(inputs * K, OUTPUTS_PER_PROGRAM))
        _launch("dense_basis", grid, [x, basis], rows, (inputs, K, 0), x.dtype, n, segments, step)
    return basis


piecewise_basis = torch.library.custom_op(
    "langinterp::piecewise_triton_basis", _piecewise_basis, mutates_args=()
)


@piecewise_basis.register_fake
def _(x: Tensor, K: int, n: int, segments: int, step: int) -> Tensor:
    return x.new_empty(x.shape[0], x.shape[1] * K)


def _piecewise_basis_grad(x: Tensor, grad: Tensor, K: int, n: int, segments: int, step: int) -> Tensor:
    """dL/dx from dL/dbasis = dL/dy @ W^T (kernel.piecewise_basis_grad's, in one Triton kernel)."""
    x, grad = x.contiguous(), grad.contiguous()
    rows, inputs = x.shape
    result = torch.empty_like(x)  # the kernel writes every entry
    if result.numel():
        grid = (_tiles(rows, ROWS_PER_PROGRAM), _tiles(inputs, OUTPUTS_PER_PROGRAM))
        _launch("dense_grad_input", grid, [x, grad, result], rows, (inputs, K, 0), x.dtype, n, segments, step)
    return result


piecewise_basis_grad = torch.library.custom_op(
    "langinterp::piecewise_triton_basis_grad", _piecewise_basis_grad, mutates_args=()
)


@piecewise_basis_grad.register_fake
def _(x: Tensor, grad: Tensor, K: int, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


piecewise_basis.register_autograd(
    basis_backward_with(piecewise_basis_grad), setup_context=basis_setup_context
)

# What the layers call: these ops while torch.compile traces, else their bodies under a plain
# autograd.Function (eager.py), without the dispatcher's cost per call.
apply_piecewise = eager_or_op(
    piecewise, _piecewise, setup_context, backward_with(_piecewise_grad_input, _piecewise_grad_weight)
)
apply_piecewise_basis = eager_or_op(
    piecewise_basis, _piecewise_basis, basis_setup_context, basis_backward_with(_piecewise_basis_grad)
)
