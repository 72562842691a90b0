"""The Triton path of the piecewise layers against the gather path and the plain-loop reference.

Without a GPU the same kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set here
before any kernel is defined); with one they run on it. Skips where Triton is not installed.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from conftest import inputs_inside_and_outside, reference

from langinterp.layers import (
    KINDS,
    HighOrderLinear,
    triton_ops,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [
    (kind, n, s)
    for kind in KINDS
    for n in range(1, 6)
    for s in ((1,) if kind == "polynomial" else (1, 2, 8, 128))
    if not (kind == "continuous" and n == 1)
]


def layer_on(path, kind, n, s, inputs=3, outputs=4, dtype=torch.float64):
    torch.manual_seed(0)
    layer = HighOrderLinear(inputs, outputs, n, s, kind, initialization="uniform").to(DEVICE, dtype)
    layer.path = path
    return layer


def pass_of(layer, x, rounding=None):
    """y, dL/dx and dL/dW of one forward+backward with a fixed upstream gradient (drawn in float64, then
    rounded to ``rounding`` or the layer's type; a piecewise-constant layer's dL/dx is zero, which autograd
    leaves None on the gather path)."""
    x = x.detach().to(DEVICE, layer.weight.dtype).requires_grad_()
    y = layer(x)
    torch.manual_seed(2)
    y.backward(torch.randn(y.shape, dtype=torch.float64).to(DEVICE, rounding or y.dtype).to(y.dtype))
    grad_x = torch.zeros_like(x) if x.grad is None else x.grad
    return y.detach(), grad_x, layer.weight.grad


@pytest.mark.parametrize(("kind", "n", "s"), CASES)
def test_triton_matches_gather_and_reference_in_float64(kind, n, s):
    x = inputs_inside_and_outside()
    ours = pass_of(layer_on("triton", kind, n, s), x)
    gather_layer = layer_on("gather", kind, n, s)
    theirs = pass_of(gather_layer, x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        ours[0].cpu(), reference(gather_layer.cpu(), x.detach()), rtol=1e-10, atol=1e-10
    )


def test_triton_covers_several_tiles_and_partial_ones():
    # 70 rows and 130 outputs: three row tiles and three output tiles, the last of each partial.
    torch.manual_seed(3)
    x = torch.rand(70, 5, dtype=torch.float64) * 2.4 - 1.2
    ours = pass_of(layer_on("triton", "continuous", 3, 16, inputs=5, outputs=130), x)
    theirs = pass_of(layer_on("gather", "continuous", 3, 16, inputs=5, outputs=130), x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_triton_in_lower_precision_matches_float64(dtype, tolerance):
    # The same (rounded) weights and inputs in float64 on the gather path: what is left is the rounding of
    # the float32 arithmetic and of the results to the storage type.
    x = inputs_inside_and_outside(rows=40, inputs=6).detach().to(dtype)
    ours = layer_on("triton", "continuous", 2, 64, inputs=6, outputs=20, dtype=dtype)
    exact = layer_on("gather", "continuous", 2, 64, inputs=6, outputs=20)
    with torch.no_grad():
        exact.weight.copy_(ours.weight)
    for a, b in zip(pass_of(ours, x), pass_of(exact, x, rounding=dtype), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b.to(dtype).double(), rtol=tolerance, atol=tolerance)


def test_triton_leading_dimensions_and_an_empty_batch():
    layer = layer_on("triton", "discontinuous", 2, 8)
    x = torch.rand(2, 5, 3, dtype=torch.float64, device=DEVICE) * 2 - 1
    assert layer(x).shape == (2, 5, 4)
    empty = torch.empty(0, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = layer(empty)
    y.sum().backward()
    assert y.shape == (0, 4) and empty.grad.shape == (0, 3)
    assert torch.count_nonzero(layer.weight.grad) == 0


def test_triton_path_gives_shapes_on_the_meta_device():
    # The ops' fake implementations: what torch.compile traces with.
    layer = HighOrderLinear(3, 4, 2, 64).to("meta")
    layer.path = "triton"
    x = torch.empty(5, 3, device="meta", requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (5, 4) and x.grad.shape == (5, 3) and layer.weight.grad.shape == layer.weight.shape


def test_triton_op_passes_gradcheck():
    torch.manual_seed(4)
    weight = torch.randn(2, 5, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    x = (torch.rand(6, 2, dtype=torch.float64, device=DEVICE) * 2.2 - 1.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: triton_ops.piecewise(a, w, 3, 2, 2), (x, weight))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the automatic choice of Triton needs CUDA")
def test_cuda_picks_triton_unless_deterministic():
    layer = layer_on("auto", "continuous", 2, 64, dtype=torch.float32)
    x = torch.rand(8, 3, device="cuda")
    assert layer.choose_path(x) == "triton"
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert layer.choose_path(x) == "gather"
    finally:
        torch.use_deterministic_algorithms(previous)
