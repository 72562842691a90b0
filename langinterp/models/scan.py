"""Mamba's selective scan, four ways that compute the same thing.

The recurrence, per batch row b, channel d and state entry n, with h_{-1} = 0:

    h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t
    y_t = sum_n C_t[n] h_t[n] + D u_t

Shapes are channel-last like the rest of the model: u, delta [batch, L, D]; A [D, N] (negative);
B, C [batch, L, N]; D [D]; y [batch, L, D]. `delta` is already positive (the model applies softplus).

- `sequential_scan`: the recurrence as written, one Python step per position. The reference for tests,
  and the same `selective_step` the model uses to generate one character at a time.
- `chunked_scan`: pure PyTorch. The sequence is cut into about sqrt(L) chunks of about sqrt(L) steps; the
  recurrence runs inside every chunk at once (from a zero state), then a short loop carries each chunk's
  final state into the next, and the running product of the decays adds the carried state back in. About
  3 sqrt(L) Python steps instead of L, the same O(L) work, and only products of decays in (0, 1]: nothing
  can overflow, whatever delta grows to in training (a log-space cumulative sum would need exp(+sum)).
  On a CPU it is memory-bound: every step reads and writes tensors of [batch, count, D, N], and autograd
  keeps them all for the backward pass (formulations with fewer, larger operations measured 1.5-5x slower
  there, from the traffic and the page faults of allocating [batch, L, D, N] at once).
- `kernel_scan` (scan_kernel.py): a fused C++ kernel for float32/float64 CPU tensors that keeps the states
  in L1 and recomputes them in its backward pass; several times faster than the others on a CPU.
- `cuda_scan`: mamba-ssm's fused CUDA kernel, used when the package imports and the tensors are on CUDA.

`selective_scan` picks one ("auto": mamba-ssm's kernel on CUDA, the CPU kernel on a CPU when it builds and
LANGINTERP_KERNEL is not 0, else chunked). Every path computes in float32 or wider with autocast off: the
decays are products of many numbers close to 1, which bf16 cannot represent.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from langinterp.models import scan_kernel

try:  # The optional `cuda` extra; any failure to load it (no package, no CUDA libraries) means "not here".
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except (ImportError, OSError):  # pragma: no cover - depends on the machine
    selective_scan_fn = None

SCANS = ("auto", "chunked", "cpu_kernel", "sequential")


def selective_step(
    h: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
) -> tuple[Tensor, Tensor]:
    """One position: state h [batch, D, N], u and delta [batch, D], B and C [batch, N] -> (y, new h)."""
    h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * u).unsqueeze(-1) * B.unsqueeze(-2)
    y = (h @ C.unsqueeze(-1)).squeeze(-1) + D * u
    return y, h


def sequential_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The reference: the recurrence one position at a time."""
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        y, h = selective_step(h, u[:, t], delta[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    return torch.stack(ys, dim=1)


def chunked_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk: int | None = None
) -> Tensor:
    """The same result in about 3 sqrt(L) steps over every chunk at once (see the module docstring)."""
    batch, length, channels = u.shape
    states = A.shape[1]
    size = chunk or max(1, math.isqrt(length - 1) + 1)
    count = -(-length // size)
    pad = count * size - length
    if pad:  # identity steps at the end (delta 0: decay 1, drive 0); their outputs are dropped
        u, delta, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (u, delta, B, C))

    def by_step(t: Tensor) -> Tensor:  # [batch, L, X] -> [size, batch, count, X]
        return t.view(batch, count, size, t.shape[-1]).permute(2, 0, 1, 3)

    deltas, drives, Bs, Cs = (
        by_step(delta).unsqueeze(-1),
        by_step(delta * u).unsqueeze(-1),
        by_step(B),
        by_step(C),
    )
    Bs, Cs = Bs.unsqueeze(-2), Cs.unsqueeze(-1)
    h = u.new_zeros(batch, count, channels, states)
    local, through = [], []
    for t in range(size):  # every chunk from a zero state, and the decay from its start to step t
        decay = torch.exp(deltas[t] * A)
        h = torch.addcmul(decay * h, drives[t], Bs[t])
        local.append(h @ Cs[t])
        through.append(decay if t == 0 else through[-1] * decay)
    carry = h.new_zeros(batch, channels, states)
    entering = []
    for c in range(count):  # the true state entering each chunk
        entering.append(carry)
        carry = torch.addcmul(h[:, c], through[-1][:, c], carry)
    start = torch.stack(entering, dim=1)
    y = torch.stack([local[t] + (through[t] * start) @ Cs[t] for t in range(size)]).squeeze(-1)
    y = y.permute(1, 2, 0, 3).reshape(batch, count * size, channels)[:, :length]
    return y + D * u[:, :length]


def cuda_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
) -> Tensor:  # pragma: no cover
    """mamba-ssm's kernel, which wants channels before time: u, delta [batch, D, L]; B, C [batch, N, L]."""
    y = selective_scan_fn(
        u.transpose(1, 2).contiguous(),
        delta.transpose(1, 2).contiguous(),
        A.contiguous(),
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
        D.contiguous(),
    )
    return y.transpose(1, 2)


def cuda_scan_available(device: torch.device) -> bool:
    return selective_scan_fn is not None and device.type == "cuda"


def scan_function(method: str, device: torch.device) -> Callable[..., Tensor]:
    """The scan `method` names ("auto": a fused kernel where one can run, else chunked)."""
    if method == "auto":
        if cuda_scan_available(device):
            return cuda_scan
        if device.type == "cpu" and scan_kernel.available():
            return scan_kernel.kernel_scan
        return chunked_scan
    if method == "chunked":
        return chunked_scan
    if method == "cpu_kernel":
        return scan_kernel.kernel_scan
    if method == "sequential":
        return sequential_scan
    raise ValueError(f"unknown scan {method!r}; expected one of {', '.join(SCANS)}")


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, method: str = "auto"
) -> Tensor:
    """y [batch, L, D] by the chosen scan, computed in float32 or wider and returned in u's dtype."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    scan = scan_function(method, u.device)
    # Devices without autocast (meta, which tests use to check that nothing is created on the wrong device)
    # have nothing to switch off, and torch.autocast refuses them.
    no_autocast = (
        torch.autocast(device_type=u.device.type, enabled=False)
        if torch.amp.is_autocast_available(u.device.type)
        else contextlib.nullcontext()
    )
    with no_autocast:
        y = scan(*(t.to(dtype) for t in (u, delta, A, B, C, D)))
    return y.to(u.dtype)
