"""The CPU gather kernel (kernel.cpp): build on first use, call through ctypes, expose as torch ops.

Why a kernel: for many segments the weights a sample touches are scattered over a table of K rows per
input, and no single PyTorch operation both gathers them and keeps the backward pass cheap (embedding_bag
with per-sample weights is 10-20x slower backward than forward on CPU; a dense basis costs K/n times a
Linear). The kernel visits only the n active rows per input, in forward and backward, so its work and
memory do not grow with the number of segments. Four ways, chosen per call:

- bucketed (every dL/dW; forward and dL/dx of small batches, but the forward pass of the smallest; dL/dx at
  n = 2 with more than 64 segments, or wanted with dL/dW):
  input by input over the samples grouped by the segment they fall in (a counting sort of x's column), so
  that a segment's n weight rows are read once for all its samples: the forward pass keeps them in
  registers while its samples' output rows stream past, dL/dW accumulates them in registers while dL/dy
  streams past (one store per segment, not per sample), and dL/dx takes its dot products against them in
  L1 (at n = 2 one dot product with the difference of the two rows). A backward pass that wants both
  gradients at n = 2 takes them in one pass over the buckets (``grad_both``), which sorts once and reads
  each row of dL/dy once for both: 0.62-0.85 of the time of the two passes at batch 1024
  (benchmarks/README.md). dL/dW alone over a dL/dy of more than 512 KiB and more than one block of
  columns takes the blocks outermost, from a copy of dL/dy laid out block by block, so that a block stays
  in L2 from one input to the next (kernel.cpp, by_blocks).
- tiled (forward and the other dL/dx, of batches of at least K rows): a slice of the table (a few inputs,
  one block of output columns; for dL/dx each segment's n - 1 differences of rows) is copied out (every
  block's slice of those inputs in one pass over their rows, in order) and, held in L1, the samples stream
  past it in order, each picking its rows by segment, its block of y kept in registers
  across the slice's inputs. It needs no sort and touches each output row once per slice rather than once
  per input: 1.2-1.5x faster per pass at batch 1024.
- in place (the forward pass of batches of at least K rows whose table rows are whole aligned vectors, at
  most 8 of them, when K is large against each thread's rows): as tiled, but each sample reads its rows
  straight from the table, a group of inputs whose rows fill about 256 KiB of L2 at a time, with no copy of
  the table, whose cost grows with K (benchmarks/README.md).
- direct (the forward pass of batches of at most a quarter of a row per segment, generation's batch of one):
  sample by sample, each reading its n rows per input straight from the table. There a row serves too few
  samples to repay the bucketed pass's sort, whose loops over the segments were most of its time: 0.38-0.70
  of the bucketed pass's time at batch 1 with 8-128 segments (benchmarks/README.md).

The layer over character codes (character.py) has two passes of its own (``character_lookup``): each code
has one place in its segment, so its n rows combine into one row per input, and the forward pass of a
batch of at least 256 rows builds that table and reads one row per input and sample; dL/dW sums each
code's rows of dL/dy once.

Rows of y and dL/dy are handled padded to whole vectors on 64-byte boundaries (kernel.cpp says why). A
gather per sample from the whole table, the obvious way, reads the rows from L2 or memory once per sample
and measured 1.1-1.8x slower per pass than the bucketed pass. For small K the same C code also builds the
dense basis matrix and dL/dx of the matmul path in one pass per row, where PyTorch needs a dozen
elementwise passes.

How: kernel.cpp includes no torch headers, so the system C++ compiler builds it on first use (most of a
minute on the 2-core development machine, for its many specialised passes: README; native.py: cached,
keyed by source, compiler and CPU, written atomically). Each call uses
``torch.get_num_threads()`` threads, or fewer when the call is too small to repay waking them. The calls
are wrapped as ``torch.library`` custom ops with fake (meta) implementations and a registered autograd
formula, so autograd and ``torch.compile`` see one op. The layers call them through ``apply_*`` (eager.py):
the ops under torch.compile, else their bodies under a plain autograd.Function, without the dispatcher's
cost per call (the input layers' forward and backward pass at batch 1024 takes 0.86-0.92 of the time,
benchmarks/README.md).

If there is no compiler, or ``LANGINTERP_KERNEL=0``, :func:`available` is False and the layers fall back to
pure PyTorch (see piecewise.py). Only float32 and float64 CPU tensors are handled here.
"""

import ctypes
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from .. import native
from .eager import eager_or_op

SOURCE = Path(__file__).with_name("kernel.cpp")
DTYPES = native.DTYPES


def _arguments(pointers: int, sizes: int, grad: bool = False) -> list[type]:
    """Tensors first, then for a pass that reads dL/dy its two strides (int64), then the row count (int64),
    then `sizes` ints."""
    return [ctypes.c_void_p] * pointers + [ctypes.c_int64] * (3 if grad else 1) + [ctypes.c_int] * sizes


SIGNATURES = {
    "forward": _arguments(3, 7),
    "grad_weight": _arguments(3, 7, grad=True),
    "grad_input": _arguments(5, 7, grad=True),
    "grad_both": _arguments(6, 7, grad=True),
    "dense_basis": _arguments(2, 7),
    "dense_grad_input": _arguments(3, 7),
    "codes_forward": _arguments(4, 7),
    "codes_grad_weight": _arguments(3, 7, grad=True),
}


@cache
def _library() -> ctypes.CDLL | None:
    return native.bind(SOURCE, SIGNATURES, instead="pure PyTorch")


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the compiled kernel can be used in this process (compiles it on the first call).

    A constant to torch.compile, which therefore never traces the build.
    """
    return _library() is not None


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether the kernel handles these tensors: CPU, float32/float64, and a compiled kernel."""
    return x.is_cpu and weight.is_cpu and weight.dtype in DTYPES and available()


GRAIN = (
    1 << 18
)  # multiply-adds worth waking another thread for (a wake-up costs ~10-100 us, far more when busy)


def _threads(work: int) -> int:
    """Threads for a call doing ``work`` multiply-adds: torch's count, fewer for small calls."""
    return max(1, min(torch.get_num_threads(), work // GRAIN))


def _call(
    name: str,
    tensors: list[Tensor],
    x: Tensor,
    weight: Tensor,
    n: int,
    segments: int,
    step: int,
    library: ctypes.CDLL | None = None,
    strides: tuple[int, ...] = (),
):
    """Run kernel ``name`` on ``tensors`` (x first, [rows, in]: every kernel transposes it itself to work
    input by input, faster than x.t().contiguous(), kernel.cpp's transpose_rows) and, for dL/dx, a transposed
    result buffer that torch allocates so that it sees that memory. ``library``: another build of kernel.cpp
    (benchmarks/kernel_ab.py), else this process's; ``strides``: dL/dy's, for the passes that read it."""
    if name in ("grad_input", "grad_both"):
        tensors = [*tensors, x.new_empty(weight.shape[0], x.shape[0])]
    _invoke(name, tensors, x.shape[0], weight, n, segments, step, library, strides)


def _invoke(
    name: str,
    tensors: list[Tensor],
    rows: int,
    weight: Tensor,
    n: int,
    segments: int,
    step: int,
    library: ctypes.CDLL | None = None,
    strides: tuple[int, ...] = (),
):
    """Call kernel ``name`` on ``tensors`` as they are, with dL/dy's ``strides`` (for the passes that read
    it), the layer's sizes and a thread count."""
    inputs, K, outputs = weight.shape
    function = getattr(library or _library(), f"{name}_{DTYPES[weight.dtype]}")
    threads = _threads(rows * inputs * n * outputs)
    function(*[t.data_ptr() for t in tensors], *strides, rows, inputs, outputs, n, segments, step, K, threads)


def run_pass(
    name: str,
    x: Tensor,
    weight: Tensor,
    grad: Tensor | None,
    n: int,
    segments: int,
    step: int,
    library: ctypes.CDLL | None = None,
) -> Tensor:
    """Kernel pass ``name`` into a new result: ``forward`` (y), ``grad_weight`` (dL/dW: the kernel writes
    every entry, and ``weight`` supplies only its shape) or ``grad_input`` (dL/dx); ``grad`` is dL/dy for the
    two backward passes, with any strides (a sum's, one value broadcast, goes in as it is). The other tensors
    contiguous; ``library`` as in _call."""
    if name == "forward":
        result = x.new_empty(x.shape[0], weight.shape[2])
        _call(name, [x, weight, result], x, weight, n, segments, step, library)
        return result
    if name == "grad_weight":
        result = torch.empty_like(weight, memory_format=torch.contiguous_format)
        tensors = [x, grad, result]
    else:
        result = torch.empty_like(x)
        tensors = [x, weight, grad, result]
    _call(name, tensors, x, weight, n, segments, step, library, grad.stride())
    return result


def run_grad_both(
    x: Tensor,
    weight: Tensor,
    grad: Tensor,
    n: int,
    segments: int,
    step: int,
    library: ctypes.CDLL | None = None,
) -> tuple[Tensor, Tensor]:
    """dL/dx and dL/dW of one backward pass in one call (kernel.cpp's grad_both: at n = 2 one pass over the
    buckets, reading each row of dL/dy once for both; other n the two passes). ``grad`` with any strides,
    the other tensors contiguous; ``library`` as in _call."""
    grad_x = torch.empty_like(x)
    grad_w = torch.empty_like(weight, memory_format=torch.contiguous_format)
    tensors = [x, weight, grad, grad_w, grad_x]
    _call("grad_both", tensors, x, weight, n, segments, step, library, grad.stride())
    return grad_x, grad_w


def _piecewise(x: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """y[r, o] = sum_i sum_k phi_k(t_ri) weight[i, j_ri * step + k, o]; x [rows, in], weight [in, K, out]."""
    return run_pass("forward", x.contiguous(), weight.contiguous(), None, n, segments, step)


piecewise = torch.library.custom_op("langinterp::piecewise", _piecewise, mutates_args=())


@piecewise.register_fake
def _(x: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[2])


def _piecewise_grad_weight(
    x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int
) -> Tensor:
    """dL/dweight; ``weight`` supplies only the shape (the gradient is linear in phi)."""
    return run_pass("grad_weight", x.contiguous(), weight, grad, n, segments, step)


piecewise_grad_weight = torch.library.custom_op(
    "langinterp::piecewise_grad_weight", _piecewise_grad_weight, mutates_args=()
)


@piecewise_grad_weight.register_fake
def _(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _piecewise_grad_input(
    x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int
) -> Tensor:
    """dL/dx = segments * sum_k phi_k'(t) <weight row, grad>."""
    return run_pass("grad_input", x.contiguous(), weight.contiguous(), grad, n, segments, step)


piecewise_grad_input = torch.library.custom_op(
    "langinterp::piecewise_grad_input", _piecewise_grad_input, mutates_args=()
)


@piecewise_grad_input.register_fake
def _(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _piecewise_grads(
    x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int
) -> tuple[Tensor, Tensor]:
    """(dL/dx, dL/dweight) together, for a backward pass that wants both."""
    return run_grad_both(x.contiguous(), weight.contiguous(), grad, n, segments, step)


piecewise_grads = torch.library.custom_op("langinterp::piecewise_grads", _piecewise_grads, mutates_args=())


@piecewise_grads.register_fake
def _(x: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> tuple[Tensor, Tensor]:
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
    )


# The character codes the passes over codes serve, 0..127 (kernel.cpp's kCodes; CharacterInput's CODES).
CODES = 128

# The forward pass over codes builds its table of one row per code and input (kernel.cpp) from this many
# rows on, twice the table's rows per input: at batch 1024 (16 inputs, 250 outputs, 128 segments) it took
# 0.78-0.86 of the time of the gather pass on the codes' x (two runs of `benchmarks/kernel_ab.py --base
# 608fab2`); measured ad hoc, at 256 rows about 0.9 of it, at 128 rows as long, and at one row 1.8x as long
# (building the table is most of that).
CODES_TABLE_ROWS = 2 * CODES


def codes_table(codes: Tensor, weight: Tensor) -> Tensor:
    """The forward pass's scratch table [in, CODES, out padded to whole 64-byte vectors] (torch's allocations
    start on 64-byte boundaries, as the kernel's loads need), or an empty tensor: fewer rows than
    CODES_TABLE_ROWS take the gather pass and need none."""
    if codes.shape[0] < CODES_TABLE_ROWS:
        return weight.new_empty(0)
    per_vector = 64 // weight.element_size()
    padded = -(-weight.shape[2] // per_vector) * per_vector
    return weight.new_empty(weight.shape[0], CODES, padded)


def run_codes_pass(
    name: str,
    codes: Tensor,
    weight: Tensor,
    grad: Tensor | None,
    n: int,
    segments: int,
    step: int,
    library: ctypes.CDLL | None = None,
) -> Tensor:
    """Pass ``name`` of the layer over character codes into a new result: ``codes_forward`` (y) or
    ``codes_grad_weight`` (dL/dW, every entry written; ``grad`` is dL/dy, with any strides). codes: uint8
    [rows, in], 0..127; the other tensors contiguous; ``library`` as in _call."""
    if name == "codes_forward":
        result = weight.new_empty(codes.shape[0], weight.shape[2])
        tensors = [codes, weight, codes_table(codes, weight), result]
        _invoke(name, tensors, codes.shape[0], weight, n, segments, step, library)
        return result
    result = torch.empty_like(weight, memory_format=torch.contiguous_format)
    _invoke(name, [codes, grad, result], codes.shape[0], weight, n, segments, step, library, grad.stride())
    return result


def _character_lookup(codes: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """y[r, o] = sum_i sum_k phi_k(t_c) weight[i, j_c * step + k, o] for c = codes[r, i] (uint8, 0..127) at
    x = (c + 0.5) / 64 - 1: piecewise on those x, by a table of one row per code (kernel.cpp)."""
    return run_codes_pass("codes_forward", codes.contiguous(), weight.contiguous(), None, n, segments, step)


character_lookup = torch.library.custom_op("langinterp::character_lookup", _character_lookup, mutates_args=())


@character_lookup.register_fake
def _(codes: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return weight.new_empty(codes.shape[0], weight.shape[2])


def _character_lookup_grad_weight(
    codes: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int
) -> Tensor:
    """dL/dweight of character_lookup; ``weight`` supplies only the shape."""
    return run_codes_pass("codes_grad_weight", codes.contiguous(), weight, grad, n, segments, step)


character_lookup_grad_weight = torch.library.custom_op(
    "langinterp::character_lookup_grad_weight", _character_lookup_grad_weight, mutates_args=()
)


@character_lookup_grad_weight.register_fake
def _(codes: Tensor, grad: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def run_dense_pass(
    name: str,
    x: Tensor,
    grad: Tensor | None,
    K: int,
    n: int,
    segments: int,
    step: int,
    drop: int = 0,
    library: ctypes.CDLL | None = None,
) -> Tensor:
    """Dense-path pass ``name`` into a new result: ``dense_basis`` (the [rows, in*(K - drop)] basis matrix)
    or ``dense_grad_input`` (dL/dx from ``grad``, dL/dbasis); ``drop`` = 1 for the reduced basis, without
    each input's first node; contiguous tensors; ``library`` as in _call."""
    if name == "dense_basis":
        result = x.new_empty(x.shape[0], x.shape[1] * (K - drop))
        tensors = [x, result]
    else:
        result = torch.empty_like(x)
        tensors = [x, grad, result]
    function = getattr(library or _library(), f"{name}_{DTYPES[x.dtype]}")
    threads = _threads(x.shape[0] * x.shape[1] * K)
    function(*[t.data_ptr() for t in tensors], x.shape[0], x.shape[1], n, segments, step, K, drop, threads)
    return result


def _piecewise_basis(x: Tensor, K: int, n: int, segments: int, step: int, drop: int = 0) -> Tensor:
    """The [rows, in*(K - drop)] basis matrix of the dense path: phi at each input's n active columns, zero
    elsewhere; with ``drop`` = 1 without each input's first node (the reduced basis of piecewise.py).

    Its product with the weight table is left to a plain matmul, so that autograd keeps the basis for dL/dW
    (as a Linear keeps its input) instead of this op rebuilding it.
    """
    return run_dense_pass("dense_basis", x.contiguous(), None, K, n, segments, step, drop)


piecewise_basis = torch.library.custom_op("langinterp::piecewise_basis", _piecewise_basis, mutates_args=())


@piecewise_basis.register_fake
def _(x: Tensor, K: int, n: int, segments: int, step: int, drop: int = 0) -> Tensor:
    return x.new_empty(x.shape[0], x.shape[1] * (K - drop))


def _piecewise_basis_grad(
    x: Tensor, grad: Tensor, K: int, n: int, segments: int, step: int, drop: int = 0
) -> Tensor:
    """dL/dx[r, i] = sum_k dphi_k/dx grad[r, active column k of input i] (grad: dL/dbasis = dy @ W^T)."""
    return run_dense_pass("dense_grad_input", x.contiguous(), grad.contiguous(), K, n, segments, step, drop)


piecewise_basis_grad = torch.library.custom_op(
    "langinterp::piecewise_basis_grad", _piecewise_basis_grad, mutates_args=()
)


@piecewise_basis_grad.register_fake
def _(x: Tensor, grad: Tensor, K: int, n: int, segments: int, step: int, drop: int = 0) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def basis_setup_context(ctx, inputs, output) -> None:
    """Autograd context of a basis op (x and its ints); triton_ops.py shares it."""
    x, *shape = inputs
    ctx.save_for_backward(x)
    ctx.shape = shape


def basis_backward_with(grad_op):
    """The backward formula of a basis op from its dL/dx op (shared with triton_ops.py)."""

    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        grad_x = grad_op(x, grad, *ctx.shape) if ctx.needs_input_grad[0] else None
        return grad_x, *[None] * len(ctx.shape)

    return backward


piecewise_basis.register_autograd(
    basis_backward_with(piecewise_basis_grad), setup_context=basis_setup_context
)


def setup_context(ctx, inputs, output) -> None:
    """Autograd context of a piecewise op (x or codes, weight, n, segments, step); triton_ops.py shares it."""
    x, weight, n, segments, step = inputs
    ctx.save_for_backward(x, weight)
    ctx.shape = (n, segments, step)


def backward_with(grad_input, grad_weight, grads=None, any_strides=False):
    """The backward formula of a piecewise op from its two gradient ops (shared with triton_ops.py);
    ``grad_input`` None for an op whose first input is integer codes, which has no gradient; ``grads``, if
    given, an op computing both at once, called when both are wanted; ``any_strides``: the ops take dL/dy
    with any strides (the C++ kernel's), else it is made contiguous first."""

    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        if not any_strides:
            grad = (
                grad.contiguous()
            )  # once for both ops: a broadcast dL/dy (of a sum) would be copied by each
        wanted = grad_input is not None and ctx.needs_input_grad[0]
        if wanted and ctx.needs_input_grad[1] and grads is not None:
            return *grads(x, grad, weight, *ctx.shape), None, None, None
        grad_x = grad_input(x, grad, weight, *ctx.shape) if wanted else None
        grad_w = grad_weight(x, grad, weight, *ctx.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None

    return backward


piecewise.register_autograd(
    backward_with(piecewise_grad_input, piecewise_grad_weight, piecewise_grads, any_strides=True),
    setup_context=setup_context,
)

character_lookup.register_autograd(
    backward_with(None, character_lookup_grad_weight, any_strides=True), setup_context=setup_context
)

# What the layers call: these ops while torch.compile traces, else their bodies under a plain
# autograd.Function (eager.py), without the dispatcher's cost per call.
apply_piecewise = eager_or_op(
    piecewise,
    _piecewise,
    setup_context,
    backward_with(_piecewise_grad_input, _piecewise_grad_weight, _piecewise_grads, any_strides=True),
)
apply_character_lookup = eager_or_op(
    character_lookup,
    _character_lookup,
    setup_context,
    backward_with(None, _character_lookup_grad_weight, any_strides=True),
)
apply_piecewise_basis = eager_or_op(
    piecewise_basis, _piecewise_basis, basis_setup_context, basis_backward_with(_piecewise_basis_grad)
)
