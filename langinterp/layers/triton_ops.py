"""The piecewise layers' CUDA path: the Triton kernels of triton_kernels.py as torch ops.

Why: elsewhere than the CPU the exact pure-PyTorch fallback is embedding_bag with per-sample weights, which
first builds [rows, in*n] tensors of row indices and basis values (and, for dL/dx, autograd's graph through
the basis), and whose backward goes through embedding_bag's generic sparse gradient. The kernels instead
locate each input's segment, evaluate its basis and gather its n weight rows in one pass per direction
(forward, dL/dx, dL/dW), so time and memory stay those of a Linear(in*n, out) whatever the segments.

dL/dW is summed with atomic adds, so on a GPU its float rounding can differ from run to run; under
``torch.use_deterministic_algorithms(True)`` the layers take the gather path instead (see ``supports``).
Its warn-only form (``warn_only=True``, what Lightning's ``deterministic="warn"`` sets, and so what
``langinterp train`` runs under on a GPU) keeps the kernels and the layer warns once, as torch's own
nondeterministic operations do there.
Float16, bfloat16 and float32 weights compute in float32 (dL/dW accumulates in float32), float64 in float64.

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
from .kernel import backward_with, setup_context

FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# A tile of 32 rows by 64 outputs per program, over 8 warps: compiled for sm_90, the float32 kernels then
# hold 64-128 registers per thread and spill none (tests/test_triton.py compiles them; with 4 warps the
# dL/dx kernel needs about 250).
ROWS_PER_PROGRAM = 32
OUTPUTS_PER_PROGRAM = 64
WARPS = 8


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


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether the Triton path handles these tensors: CUDA, a float type, nondeterminism allowed, Triton."""
    return (
        x.device.type == "cuda"
        and weight.device.type == "cuda"
        and weight.dtype in FLOAT_TYPES
        and not strictly_deterministic()
        and available()
    )


def _compute_dtype(weight: Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


@cache
def _basis_constants(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The n nodes and the inverse Lagrange denominators 1 / prod_{m != k} (X_k - X_m), on the device."""
    nodes = chebyshev_lobatto(n)
    inverse = torch.stack(
        [1 / torch.prod(nodes[k] - torch.cat([nodes[:k], nodes[k + 1 :]])) for k in range(n)]
    )
    return nodes.to(device, dtype), inverse.to(device, dtype)


def _launch(name: str, grid: tuple[int, ...], tensors: list[Tensor], x: Tensor, weight: Tensor, n: int,
            segments: int, step: int) -> None:  # fmt: skip
    import triton.language as tl

    from . import triton_kernels

    inputs, K, outputs = weight.shape
    compute = _compute_dtype(weight)
    nodes, inverse = _basis_constants(n, compute, weight.device)
    # Triton launches on the current CUDA device: make it the tensors' one.
    on_device = torch.cuda.device(weight.device) if weight.device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        getattr(triton_kernels, name)[grid](
            *tensors, nodes, inverse, x.shape[0], inputs, outputs, K, segments,
            STRIDE=step, N=n, ACC=tl.float64 if compute == torch.float64 else tl.float32,
            BR=ROWS_PER_PROGRAM, BO=OUTPUTS_PER_PROGRAM, num_warps=WARPS,
        )  # fmt: skip


def _tiles(count: int, size: int) -> int:
    return -(-count // size)


@torch.library.custom_op("langinterp::piecewise_triton", mutates_args=())
def piecewise(x: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """y[r, o] = sum_i sum_k phi_k(t_ri) weight[i, j_ri * step + k, o]; x [rows, in], weight [in, K, out]."""
    x, weight = x.contiguous(), weight.contiguous()
    rows, outputs = x.shape[0], weight.shape[2]
    y = x.new_zeros(rows, outputs, dtype=weight.dtype)
    if rows:
        grid = (_tiles(rows, ROWS_PER_PROGRAM), _tiles(outputs, OUTPUTS_PER_PROGRAM))
        _launch("forward", grid, [x, weight, y], x, weight, n, segments, step)
    return y


@piecewise.register_fake
def _(x: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[2], dtype=weight.dtype)


@torch.library.custom_op("langinterp::piecewise_triton_grad_input", mutates_args=())
def piecewise_grad_input(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """dL/dx = dt/dx sum_k phi_k'(t) <weight row, grad>."""
    x, grad, weight = x.contiguous(), grad.contiguous(), weight.contiguous()
    result = torch.zeros_like(x)
    if x.shape[0]:
        grid = (_tiles(x.shape[0], ROWS_PER_PROGRAM), x.shape[1])
        _launch("grad_input", grid, [x, weight, grad, result], x, weight, n, segments, step)
    return result


@piecewise_grad_input.register_fake
def _(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("langinterp::piecewise_triton_grad_weight", mutates_args=())
def piecewise_grad_weight(
    x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int
) -> Tensor:
    """dL/dweight; ``weight`` supplies only the shape and type (the gradient is linear in phi)."""
    if torch.are_deterministic_algorithms_enabled():  # warn-only: strict mode never reaches this op
        warnings.warn(
            "the piecewise layers' Triton dL/dW adds atomically and is not bit-for-bit repeatable; "
            "torch.use_deterministic_algorithms(True) without warn_only makes them take the gather path",
            UserWarning,
            stacklevel=2,
        )
    x, grad = x.contiguous(), grad.contiguous()
    total = torch.zeros(weight.shape, dtype=_compute_dtype(weight), device=weight.device)
    if x.shape[0]:
        inputs, _, outputs = weight.shape
        grid = (_tiles(x.shape[0], ROWS_PER_PROGRAM), inputs, _tiles(outputs, OUTPUTS_PER_PROGRAM))
        _launch("grad_weight", grid, [x, grad, total], x, weight, n, segments, step)
    return total.to(weight.dtype)


@piecewise_grad_weight.register_fake
def _(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


piecewise.register_autograd(
    backward_with(piecewise_grad_input, piecewise_grad_weight), setup_context=setup_context
)
