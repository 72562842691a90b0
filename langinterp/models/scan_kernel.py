"""Mamba's selective scan as one fused CPU kernel (scan_kernel.cpp), exposed as a torch op.

Why a kernel: on a CPU every pure-PyTorch scan (scan.py) materialises tensors of [batch, L, D, N] - the
decays, the states, and in the backward pass their gradients - and moves each through memory several
times, so a training step of the mamba recipe spends most of its time in the scan's memory traffic and
allocations. The kernel walks the time axis once per batch row and block of channels with the states in
L1, and its backward pass recomputes them instead of saving them: the only tensors it writes are y and the
input gradients.

How: scan_kernel.cpp includes no torch headers; native.py builds it with the system compiler on first use
(cached) and it is called through ctypes with ``torch.get_num_threads()`` threads. The calls are wrapped as
``torch.library`` custom ops with fake implementations and a registered autograd formula, so autograd and
``torch.compile`` see one op. Only float32 and float64 CPU tensors are handled; :func:`available` is False
when ``LANGINTERP_KERNEL=0`` or the kernel cannot be built, and scan.py then uses its chunked scan.
"""

import ctypes
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from .. import native

SOURCE = Path(__file__).with_name("scan_kernel.cpp")
DTYPES = native.DTYPES


@cache
def _library() -> ctypes.CDLL | None:
    # Tensors, then batch, length, channels and states (int64), then the thread count.
    sizes = [ctypes.c_int64] * 4 + [ctypes.c_int]
    signatures = {
        "scan_forward": [ctypes.c_void_p] * 7 + sizes,
        "scan_backward": [ctypes.c_void_p] * 13 + sizes,
    }
    return native.bind(SOURCE, signatures, instead="the chunked scan")


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernel can be used now: ``LANGINTERP_KERNEL`` is read on every call (so switching it off
    takes effect at once), the build is attempted once per process."""
    return native.enabled() and _library() is not None


def _call(name: str, tensors: list[Tensor]) -> None:
    """Run entry point ``name`` on ``tensors`` (u, delta, A, B, C, D first), after checking that they are what
    the C code assumes: CPU, one float dtype, contiguous, and the shapes of one scan."""
    u, delta, A, B, C, D = tensors[:6]
    batch, length, channels = u.shape
    states = A.shape[1]
    shapes = {
        "delta": (delta, (batch, length, channels)),
        "A": (A, (channels, states)),
        "B": (B, (batch, length, states)),
        "C": (C, (batch, length, states)),
        "D": (D, (channels,)),
    }
    for label, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{label} has shape {tuple(tensor.shape)}, expected {shape}")
    if u.device.type != "cpu" or u.dtype not in DTYPES:
        raise ValueError(f"the CPU scan kernel takes float32/float64 CPU tensors, not {u.dtype}, {u.device}")
    if not available():
        raise native.KernelUnavailable("the selective-scan CPU kernel is unavailable")
    if any(t.device != u.device or t.dtype != u.dtype or not t.is_contiguous() for t in tensors):
        raise ValueError("every tensor must be contiguous and share u's device and dtype")
    function = getattr(_library(), f"{name}_{DTYPES[u.dtype]}")
    pointers = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
    function(*pointers, batch, length, channels, states, torch.get_num_threads())


@torch.library.custom_op("langinterp::selective_scan", mutates_args=())
def kernel_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """y [batch, L, D] of the selective scan (scan.py's shapes and recurrence)."""
    inputs = [t.contiguous() for t in (u, delta, A, B, C, D)]
    y = torch.empty_like(inputs[0])
    _call("scan_forward", [*inputs, y])
    return y


@kernel_scan.register_fake
def _(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("langinterp::selective_scan_backward", mutates_args=())
def kernel_scan_backward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, grad: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of every input (du, ddelta, dA, dB, dC, dD) from dL/dy; the states are recomputed."""
    inputs = [t.contiguous() for t in (u, delta, A, B, C, D, grad)]
    grads = [torch.empty_like(t) for t in inputs[:6]]
    _call("scan_backward", [*inputs, *grads])
    return tuple(grads)


@kernel_scan_backward.register_fake
def _(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, grad: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (u, delta, A, B, C, D))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor):
    return kernel_scan_backward(*ctx.saved_tensors, grad)


kernel_scan.register_autograd(_backward, setup_context=_setup_context)
