"""High-order layers: exact agreement with high-order-layers-torch and a plain-loop reference, gradients,
fast paths, devices, initialisation, normalisation and refinement. Small shapes: fast, offline, CPU."""

import pytest
import torch
from conftest import LAYER_CASES, inputs_inside_and_outside, reference

from langinterp import native
from langinterp.layers import (
    KINDS,
    NORMALIZATIONS,
    CharacterInput,
    HighOrderLinear,
    codes_to_unit,
    normalization,
    refine,
)
from langinterp.layers import kernel as layer_kernel
from langinterp.layers.basis import chebyshev_lobatto, stride, weights_per_link
from langinterp.layers.piecewise import active_rows

pytestmark = pytest.mark.gpu  # exercises CUDA where there is a GPU (tests/conftest.py)

# "pure" is the dense path without the compiled kernel (its basis built by PyTorch operations), as on a
# machine without a compiler, on CUDA or in bf16.
PATHS = ["dense", "gather", "pure", *(["kernel", "reduced"] if layer_kernel.available() else [])]


def make(kind, n, s, inputs=3, outputs=4, path="dense", dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    layer = HighOrderLinear(inputs, outputs, n, s, kind, **kwargs).to(dtype)
    if path == "reduced" and layer.weights_per_link == 1:
        pytest.skip("the reduced basis needs two weights per link or more")  # a constant: nothing to reduce
    layer.path = "dense" if path == "pure" else path
    return layer


@pytest.fixture
def path(request, monkeypatch):
    """The path under test; "pure" also disables the compiled kernel."""
    if request.param == "pure":
        monkeypatch.setattr(layer_kernel, "supports", lambda *tensors: False)
    return request.param


def oracle(layer):
    """The same layer in high-order-layers-torch, in float64, with our weights copied across.

    The package stores its Lagrange denominators in float32 whatever the default dtype; they are recomputed
    in float64 so that the comparison can be held to 1e-10.
    """
    polynomial_layers = pytest.importorskip("high_order_layers_torch.PolynomialLayers")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cls = {
            "continuous": polynomial_layers.PiecewisePolynomial,
            "discontinuous": polynomial_layers.PiecewiseDiscontinuousPolynomial,
        }.get(layer.kind)
        if cls is None:
            theirs = polynomial_layers.Polynomial(layer.n, layer.in_features, layer.out_features)
            basis = theirs.poly.basis
        else:
            theirs = cls(layer.n, layer.in_features, layer.out_features, layer.segments)
            basis = theirs._poly.basis
        if layer.n > 1:
            X = basis.X.double()
            basis.X = X
            basis.denominators = torch.where(
                torch.eye(layer.n, dtype=torch.bool), torch.ones(()), X.unsqueeze(1) - X.unsqueeze(0)
            )
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        theirs.w.copy_(layer.weight.permute(2, 0, 1))
    return theirs


def relative_error(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-300))


def assert_matches_the_package(layer):
    """y, dL/dx and dL/dW of ``layer`` against the package's, in float64, to 1e-10."""
    theirs = oracle(layer)
    x = inputs_inside_and_outside()
    x_theirs = x.detach().clone().requires_grad_()
    weights = torch.randn(12, 4, dtype=torch.float64)
    ours, expected = layer(x), theirs(x_theirs)
    (ours * weights).sum().backward()
    (expected * weights).sum().backward()
    assert relative_error(ours, expected) <= 1e-10
    if layer.n == 1:  # piecewise constant: no path from x to y
        assert x_theirs.grad is None and (x.grad is None or not x.grad.any())
    else:
        assert relative_error(x.grad, x_theirs.grad) <= 1e-10
    assert relative_error(layer.weight.grad, theirs.w.grad.permute(1, 2, 0)) <= 1e-10


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize(("kind", "n", "s"), LAYER_CASES)
def test_matches_high_order_layers_torch(kind, n, s, path):
    # Random weights, not lines: extrapolating a line through n > 2 nodes cancels large basis values and
    # would make the comparison one of rounding noise.
    assert_matches_the_package(make(kind, n, s, path=path, initialization="uniform"))


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize(
    ("kind", "n", "s"), [("continuous", 3, 4), ("discontinuous", 2, 3), ("polynomial", 4, 1)]
)
def test_matches_plain_loop_reference_with_leading_dims_and_bias(kind, n, s, path):
    layer = make(kind, n, s, path=path, bias=True)
    with torch.no_grad():
        layer.bias.uniform_()
    x = inputs_inside_and_outside(rows=10)
    y = layer(x.detach().view(2, 5, 3))
    assert y.shape == (2, 5, 4)
    expected = reference(layer, x.detach()) + layer.bias.detach()
    torch.testing.assert_close(y.reshape(10, 4), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_one_sample_a_batch_and_a_grid_of_samples_give_the_same_rows(path):
    # A batch of rows comes back as the path computed it, not as a view of it (no reshape node for the
    # backward pass); other leading shapes are reshaped on the way in and out.
    layer = make("continuous", 2, 8, inputs=3, outputs=4, path=path)
    x = inputs_inside_and_outside(rows=6).detach()
    y = layer(x)
    assert y.shape == (6, 4) and y._base is None
    assert torch.equal(layer(x.view(2, 3, 3)), y.view(2, 3, 4))
    torch.testing.assert_close(layer(x[4]), y[4], rtol=1e-12, atol=1e-12)


def test_character_input_gives_a_batch_of_rows_as_computed():
    layer = CharacterInput(5, 7, 2, 128)
    codes = torch.randint(0, 128, (300, 5))
    y = layer(codes)
    assert y.shape == (300, 7) and y._base is None
    assert torch.equal(layer(codes.view(3, 100, 5)), y.view(3, 100, 7))


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize(
    ("kind", "n", "s"), [("continuous", 3, 5), ("discontinuous", 2, 3), ("polynomial", 4, 1)]
)
def test_gradcheck(kind, n, s, path):
    layer = make(kind, n, s, inputs=2, outputs=3, path=path)
    x = inputs_inside_and_outside(rows=4, inputs=2)
    assert torch.autograd.gradcheck(
        lambda x, w: torch.func.functional_call(layer, {"weight": w}, (x,)), (x, layer.weight)
    )


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_every_path_is_exact_in_float32(path):
    layer = make("continuous", 2, 64, inputs=20, outputs=30, path=path, dtype=torch.float32)
    x = torch.rand(50, 20) * 2 - 1
    torch.testing.assert_close(layer(x).double(), reference(layer, x), rtol=1e-5, atol=1e-5)


def test_continuous_at_segment_boundaries():
    layer = make("continuous", 3, 8, path="dense")
    boundaries = torch.linspace(-1, 1, 9, dtype=torch.float64)[1:-1]
    eps = 1e-9
    below = layer((boundaries - eps).unsqueeze(-1).expand(-1, 3))
    above = layer((boundaries + eps).unsqueeze(-1).expand(-1, 3))
    torch.testing.assert_close(below, above, rtol=0, atol=1e-7)


def test_choose_path_by_weights_per_link():
    small = HighOrderLinear(4, 4, 2, 2)
    large = HighOrderLinear(4, 4, 2, 64)
    x = torch.zeros(1, 4)
    assert small.choose_path(x) == "dense"
    assert HighOrderLinear(4, 4, 3, 2).choose_path(x) == "dense"
    # The reduced basis takes the dense path's place on the compiled kernel for calls doing enough work:
    # rows * in * out >= 2^24 in training, 2^26 in inference.
    wide = HighOrderLinear(128, 128, 3, 2)
    reduced = "reduced" if layer_kernel.available() else "dense"
    assert wide.choose_path(torch.zeros(1024, 128)) == reduced
    assert wide.choose_path(torch.zeros(1023, 128)) == "dense"
    with torch.no_grad():
        assert wide.choose_path(torch.zeros(1024, 128)) == "dense"
        assert wide.choose_path(torch.zeros(4096, 128)) == reduced
    # The kink basis takes their place for continuous layers with n = 2 and up to 2 segments, from 256 rows
    # and 128 inputs.
    kinked = HighOrderLinear(128, 4, 2, 2)
    assert kinked.choose_path(torch.zeros(256, 128)) == "kinks"
    assert kinked.choose_path(torch.zeros(255, 128)) == "dense"
    assert HighOrderLinear(127, 4, 2, 2).choose_path(torch.zeros(256, 127)) == "dense"
    assert (
        HighOrderLinear(128, 128, 1, 1, "discontinuous").choose_path(torch.zeros(1024, 128)) == "dense"
    )  # K = 1
    assert large.choose_path(x) == ("kernel" if layer_kernel.available() else "gather")
    assert large.choose_path(x.to("meta")) in {"gather", "kernel"}


@pytest.mark.parametrize(
    ("kind", "n", "segments", "with_kernel", "elsewhere"),
    [
        ("continuous", 2, 1, "kinks", "kinks"),  # n = 2, at most 2 segments, a large call: kink basis
        ("continuous", 2, 3, "reduced", "dense"),  # K = 4 = 2n
        ("continuous", 2, 4, "kernel", "dense"),  # K = 5 > 2n, K - 1 = 4 > 1.5n, K within 4n
        ("continuous", 4, 2, "reduced", "dense"),  # K - 1 = 6 = 1.5n
        ("continuous", 3, 3, "kernel", "dense"),  # K - 1 = 6 > 1.5n
        ("continuous", 2, 8, "kernel", "gather"),  # K = 9 > 4n
        ("continuous", 5, 2, "kernel", "dense"),  # K - 1 = 8 > 1.5n, K = 9 <= 2n
        ("continuous", 3, 2, "reduced", "dense"),  # K - 1 = 4 <= 1.5n
        ("discontinuous", 3, 2, "kernel", "dense"),  # K - 1 = 5 > 1.5n, K = 6 <= 2n
        ("discontinuous", 2, 2, "reduced", "dense"),  # K = 4 = 2n
        ("continuous", 3, 4, "kernel", "dense"),  # K - 1 = 8 > 1.5n
        ("discontinuous", 1, 4, "reduced", "dense"),  # n = 1: dense up to 3 columns, K - 1 = 3
        ("discontinuous", 1, 5, "kernel", "gather"),
    ],
)
def test_dense_path_limit_depends_on_what_else_runs(kind, n, segments, with_kernel, elsewhere):
    """Against the compiled kernel dense is taken up to K = max(2n, 3), and the reduced basis (large calls)
    up to K - 1 = max(floor(1.5n), 3) (benchmarks/paths.py); against the gather path (meta tensors, bf16,
    no compiler here) dense is taken up to K = 4n."""
    layer = HighOrderLinear(128, 128, n, segments, kind=kind)
    x = torch.zeros(1024, 128)  # large enough for the reduced basis
    if layer_kernel.available():
        assert layer.choose_path(x) == with_kernel
    assert layer.to(torch.bfloat16).choose_path(x.bfloat16()) == elsewhere


@pytest.mark.parametrize("s", [1, 2, 8, 128])
def test_kink_basis_matches_high_order_layers_torch(s):
    # The same comparison as test_matches_high_order_layers_torch (whose segment counts the package
    # locates exactly in float64), for the path that only continuous layers with n = 2 take (128 segments
    # too, forced: the basis's rounding grows with s squared). 3 and 7 segments: the plain loop, below.
    assert_matches_the_package(make("continuous", 2, s, path="kinks", initialization="uniform"))


@pytest.mark.parametrize("s", [2, 3, 7])
def test_kink_basis_with_leading_dims_bias_and_gradcheck(s):
    layer = make("continuous", 2, s, path="kinks", bias=True)
    with torch.no_grad():
        layer.bias.uniform_()
    x = inputs_inside_and_outside(rows=10)
    y = layer(x.detach().view(2, 5, 3))
    expected = reference(layer, x.detach()) + layer.bias.detach()
    torch.testing.assert_close(y.reshape(10, 4), expected, rtol=1e-12, atol=1e-12)
    small = make("continuous", 2, s, inputs=2, outputs=3, path="kinks")
    x = inputs_inside_and_outside(rows=4, inputs=2)
    assert torch.autograd.gradcheck(
        lambda x, w: torch.func.functional_call(small, {"weight": w}, (x,)), (x, small.weight)
    )


@pytest.mark.parametrize("s", [2, 3, 7])
def test_kink_basis_in_float32_and_on_the_meta_device(s):
    layer = make("continuous", 2, s, inputs=20, outputs=30, path="kinks", dtype=torch.float32)
    x = torch.rand(50, 20) * 2.2 - 1.1
    torch.testing.assert_close(layer(x).double(), reference(layer, x), rtol=1e-5, atol=1e-5)
    assert layer.to("meta")(x.to("meta")).shape == (50, 30)


def test_only_continuous_layers_with_two_nodes_take_the_kink_basis():
    for kind, n, s in [("continuous", 3, 2), ("discontinuous", 2, 2), ("polynomial", 2, 1)]:
        layer = HighOrderLinear(3, 2, n, s, kind=kind)
        assert not layer.takes_kinks
        layer.path = "kinks"
        with pytest.raises(ValueError, match="kinks path needs a continuous layer with n = 2"):
            layer(torch.zeros(1, 3))
    assert list(HighOrderLinear(3, 2, 2, 2).state_dict()) == ["weight"]  # checkpoints keep their keys


@pytest.mark.parametrize(
    ("path", "kind", "n", "s"),
    [
        (path, *case)
        for path in PATHS
        for case in [("continuous", 2, 2), ("continuous", 3, 7), ("discontinuous", 2, 3)]
    ]
    + [("kinks", "continuous", 2, s) for s in (2, 3, 7)],  # the kink basis: continuous, n = 2 only
    indirect=["path"],
)
def test_every_path_takes_the_right_segments_derivative_at_a_boundary(path, kind, n, s):
    # The package puts x = x_k in segment k, so dy/dx there is that segment's; -0.0 is the boundary 0 too.
    boundaries = [2 * k / s - 1 for k in range(s + 1)] + [-0.0]
    x = torch.tensor(boundaries, dtype=torch.float64).unsqueeze(-1).expand(-1, 3).contiguous()
    grads = []
    for name in (path, "gather"):
        layer = make(kind, n, s, path=name, initialization="uniform")
        point = x.clone().requires_grad_()
        layer(point).sum().backward()
        grads.append(point.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize(
    ("kind", "n", "s"),
    [
        ("continuous", 2, 2),
        ("continuous", 5, 3),
        ("discontinuous", 1, 4),
        ("discontinuous", 3, 8),
        ("polynomial", 4, 1),
    ],
)
def test_reduced_basis_is_the_dense_basis_without_each_inputs_first_column(kind, n, s):
    # Bit for bit, at every segment boundary, beside it and outside the domain; dL/dx likewise, against the
    # full basis's with a zero gradient for the columns left out.
    K, step = weights_per_link(kind, n, s), stride(kind, n)
    edges = torch.arange(s + 1, dtype=torch.float64) / s * 2 - 1
    x = torch.cat([edges, torch.nextafter(edges, edges - 1), torch.tensor([-3.0, 3.0, -0.0]), torch.rand(37)])
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))][:40].reshape(8, 5)
    full = layer_kernel.piecewise_basis(x, K, n, s, step).view(8, 5, K)
    reduced = layer_kernel.piecewise_basis(x, K, n, s, step, 1)
    assert torch.equal(reduced, full[:, :, 1:].reshape(8, -1))
    grad = torch.randn(8, 5, K, dtype=torch.float64)
    grad[:, :, 0] = 0
    expected = layer_kernel.piecewise_basis_grad(x, grad.reshape(8, -1), K, n, s, step)
    actual = layer_kernel.piecewise_basis_grad(x, grad[:, :, 1:].reshape(8, -1), K, n, s, step, 1)
    assert torch.equal(actual, expected)


def test_the_reduced_path_refuses_what_it_cannot_run():
    for layer, x in [
        (HighOrderLinear(3, 2, 1, 1, "discontinuous"), torch.zeros(1, 3)),  # K = 1
        (HighOrderLinear(3, 2, 2, 2).bfloat16(), torch.zeros(1, 3, dtype=torch.bfloat16)),
        (HighOrderLinear(3, 2, 2, 2).to("meta"), torch.zeros(1, 3, device="meta")),
    ]:
        layer.path = "reduced"
        with pytest.raises(ValueError, match="reduced path needs the compiled CPU kernel"):
            layer(x)
    assert list(HighOrderLinear(3, 2, 2, 2).state_dict()) == ["weight"]  # checkpoints keep their keys


def test_validation_messages():
    with pytest.raises(ValueError, match="kind"):
        HighOrderLinear(2, 2, 2, 2, kind="spline")
    with pytest.raises(ValueError, match="n >= 2"):
        HighOrderLinear(2, 2, 1, 2, kind="continuous")
    with pytest.raises(ValueError, match="one segment"):
        HighOrderLinear(2, 2, 3, 4, kind="polynomial")
    with pytest.raises(ValueError, match="segments"):
        HighOrderLinear(2, 2, 3, 0)
    with pytest.raises(ValueError, match="initialization"):
        HighOrderLinear(2, 2, 3, 2, initialization="zeros")
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        HighOrderLinear(2, 2, 3, 2)(torch.zeros(3))
    with pytest.raises(ValueError, match="normalization"):
        normalization("batch", 3)


def test_to_device_and_dtype():
    layer = HighOrderLinear(3, 4, 3, 4, bias=True)
    meta = layer.to("meta")
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    assert meta(torch.zeros(5, 3, device="meta")).shape == (5, 4)
    layer = HighOrderLinear(3, 4, 3, 4).double()
    assert layer(torch.zeros(2, 3)).dtype == torch.float64
    characters = CharacterInput(4, 5, 2, segments=16).to("meta")
    assert {t.device.type for t in [*characters.parameters(), *characters.buffers()]} == {"meta"}


def test_bf16_autocast_and_bf16_weights():
    layer = HighOrderLinear(6, 5, 2, 32)
    x = torch.rand(4, 6) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.05)
    assert layer.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_torch_compile():
    layer = HighOrderLinear(6, 5, 2, 32)
    x = (torch.rand(4, 6) * 2 - 1).requires_grad_()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, layer(x))
    assert x.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize(
    ("path", "n", "s"), [("kinks", 2, 2), ("kinks", 2, 3), ("reduced", 2, 2), ("reduced", 3, 2)]
)
def test_kinks_and_reduced_paths_under_torch_compile_inference_mode_and_bf16_autocast(path, n, s):
    if path == "reduced" and not layer_kernel.available():
        pytest.skip("no C++ compiler")
    layer = HighOrderLinear(6, 5, n, s)
    layer.path = path
    x = (torch.rand(4, 6) * 2 - 1).requires_grad_()
    with torch.inference_mode():  # first call under inference mode: nothing it makes may reach autograd
        layer(x.detach())
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, layer(x))
    assert x.grad is not None and layer.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x.bfloat16())
    torch.testing.assert_close(z.float(), layer(x), rtol=0.05, atol=0.05)


def test_character_input_under_torch_compile():
    layer = CharacterInput(4, 5, 2)
    codes = torch.randint(0, 128, (3, 4))
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(codes)
    y.sum().backward()
    torch.testing.assert_close(y, layer(codes))
    assert layer.weight.grad is not None


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
def test_a_small_kernel_call_leaves_torch_thread_count_alone():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        layer = make("continuous", 2, 64, inputs=3, outputs=4, path="kernel", dtype=torch.float32)
        layer(torch.rand(1, 3, requires_grad=True)).sum().backward()  # small: the kernel runs one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
# (2, 16): dL/dx tiled over difference rows; (2, 128): bucketed, in one pass with dL/dW (grad_both)
@pytest.mark.parametrize(("n", "s"), [(3, 64), (2, 16), (2, 128)])
def test_kernel_results_do_not_depend_on_thread_count(n, s):
    layer = make("continuous", n, s, inputs=40, outputs=70, path="kernel", dtype=torch.float32)
    x = (torch.rand(300, 40) * 2.2 - 1.1).requires_grad_()  # enough work for two threads
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            layer.zero_grad()
            x.grad = None
            y = layer(x)
            (y * torch.arange(70.0)).sum().backward()
            results.append((y.detach(), x.grad, layer.weight.grad))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
# (2, 128): the forward pass reading the table in place, both gradients in one bucketed pass; (2, 16): the
# tiled passes; (3, 8): dL/dx and dL/dW one after the other
@pytest.mark.parametrize(("n", "s"), [(2, 128), (2, 16), (3, 8)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_passes_in_float32_agree_with_float64(n, s, threads):
    # In float32 with AVX-512 the kernel transposes x and dL/dx 16 x 16 floats at a time in registers, the
    # rest (and float64) element by element: 40 inputs and 300 rows leave whole tiles and parts in both
    # directions, and two threads start their rows mid-tile.
    torch.manual_seed(0)
    K, rows, inputs, outputs = weights_per_link("continuous", n, s), 300, 40, 128
    x = torch.rand(rows, inputs, dtype=torch.float64) * 2.2 - 1.1
    weight = torch.randn(inputs, K, outputs, dtype=torch.float64)
    grad = torch.randn(rows, outputs, dtype=torch.float64)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = [
            [
                layer_kernel.run_pass("forward", *args[:2], None, n, s, n - 1),
                layer_kernel.run_pass("grad_input", *args, n, s, n - 1),
                layer_kernel.run_pass("grad_weight", *args, n, s, n - 1),
                *layer_kernel.run_grad_both(*args, n, s, n - 1),
            ]
            for args in ((x.float(), weight.float(), grad.float()), (x, weight, grad))
        ]
    finally:
        torch.set_num_threads(previous)
    for single, double in zip(*results, strict=True):
        assert relative_error(single.double(), double) <= 1e-5


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("outputs", [5, 32, 37])
def test_kernel_takes_an_empty_batch(outputs):
    layer = make("continuous", 2, 16, inputs=6, outputs=outputs, path="kernel", dtype=torch.float32)
    x = torch.rand(0, 6, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (0, outputs) and x.grad.shape == (0, 6)
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
def test_kernel_weight_gradient_overwrites_its_buffer():
    # The kernel zeroes dL/dW itself (the op hands it uninitialised memory): a buffer full of NaN must come
    # back as the gradient, with zeros where no sample fell (3 rows over 16 segments leave most empty).
    torch.manual_seed(0)
    x, weight, grad = torch.rand(3, 4) * 2 - 1, torch.randn(4, 17, 37), torch.randn(3, 37)
    result = torch.full_like(weight, float("nan"))
    layer_kernel._call("grad_weight", [x, grad, result], x, weight, 2, 16, 1, strides=grad.stride())
    expected = torch.zeros_like(weight)
    layer_kernel._call("grad_weight", [x, grad, expected], x, weight, 2, 16, 1, strides=grad.stride())
    assert torch.equal(result, expected) and (expected == 0).float().mean() > 0.5


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("kind", "n", "s"), [("continuous", 2, 128), ("continuous", 3, 64), ("discontinuous", 2, 64)]
)
def test_kernel_weight_gradient_of_a_table_past_the_caches(kind, n, s, dtype):
    # From 4 MiB on, with rows of whole vectors (128 outputs), dL/dW goes out through non-temporal stores
    # (kernel.cpp, stream_rows), a continuous layer's shared rows carried from bucket to bucket: still every
    # entry written (200 rows leave most segments empty; the buffer starts as NaN) and the dense basis's sums;
    # also when dL/dx comes in the same call (grad_both: at n = 2 in the same pass over the buckets).
    torch.manual_seed(0)
    K, step = weights_per_link(kind, n, s), stride(kind, n)
    inputs = -(-(4 << 20) // (K * 128 * dtype.itemsize))  # the fewest inputs that reach 4 MiB
    x = torch.rand(200, inputs, dtype=dtype) * 2.2 - 1.1
    weight, grad = torch.randn(inputs, K, 128, dtype=dtype), torch.randn(200, 128, dtype=dtype)
    expected = (layer_kernel.piecewise_basis(x, K, n, s, step).T @ grad).reshape(weight.shape)
    alone, together = torch.full_like(weight, float("nan")), torch.full_like(weight, float("nan"))
    layer_kernel._call("grad_weight", [x, grad, alone], x, weight, n, s, step, strides=grad.stride())
    grad_x = torch.empty_like(x)
    layer_kernel._call(
        "grad_both", [x, weight, grad, together, grad_x], x, weight, n, s, step, strides=grad.stride()
    )
    assert relative_error(alone, expected) <= (1e-12 if dtype == torch.float64 else 1e-5)
    assert torch.equal(together, alone)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("outputs", [5, 32, 37, 128, 250])
@pytest.mark.parametrize(
    ("kind", "n", "s", "rows"),
    [
        ("continuous", 2, 128, 300),  # n = 2: dL/dx in the same pass over the buckets as dL/dW
        ("discontinuous", 2, 96, 300),  # rows 2j and 2j + 1
        ("continuous", 2, 16, 9),
        ("continuous", 2, 16, 53),  # dL/dx alone would take the tiled pass here
        ("polynomial", 2, 1, 1),
        ("continuous", 3, 8, 9),  # n = 3: the two passes one after the other
        ("continuous", 3, 8, 53),
    ],
)
def test_kernel_both_gradients_in_one_call_are_the_two_passes(kind, n, s, rows, outputs, dtype):
    # grad_both computes dL/dW exactly as grad_weight does (the same sums in the same order) and, at n = 2,
    # dL/dx as the bucketed grad_input's lane-wise sums, reduced in another order. Outputs: less than a
    # vector, whole vectors (in place), a part (padded), one block of 8 vectors in float32 and two in
    # float64, and two blocks with a part (each sample's sums carried from block to block). Some buckets
    # stay empty.
    torch.manual_seed(0)
    K, step = weights_per_link(kind, n, s), stride(kind, n)
    x = torch.rand(rows, 6, dtype=dtype) * 2.2 - 1.1
    weight, grad = torch.randn(6, K, outputs, dtype=dtype), torch.randn(rows, outputs, dtype=dtype)
    grad_x, grad_w = layer_kernel.run_grad_both(x, weight, grad, n, s, step)
    assert torch.equal(grad_w, layer_kernel.run_pass("grad_weight", x, weight, grad, n, s, step))
    expected = layer_kernel.run_pass("grad_input", x, weight, grad, n, s, step)
    assert relative_error(grad_x, expected) <= (1e-14 if dtype == torch.float64 else 1e-6)
    if n != 2:
        assert torch.equal(grad_x, expected)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("segments", [1, 2, 3, 8, 12, 128, 1000, 1024])
def test_kernel_locates_inputs_in_the_packages_arithmetic_bit_for_bit(dtype, segments):
    # The kernel multiplies by 1 / s and s / 2 where s is a power of two (both exact) and divides otherwise;
    # either way segment and local coordinate must round exactly as basis.locate's divisions. With n = 2
    # the basis is (1 - t) / 2, (1 + t) / 2, exact given t, so the dense basis shows t bit for bit. Inputs:
    # every segment boundary, the floats on either side of it, the domain's ends and beyond, random ones.
    boundaries = (torch.arange(segments + 1, dtype=torch.float64) / segments * 2 - 1).to(dtype)
    x = torch.cat(
        [
            boundaries,
            torch.nextafter(boundaries, torch.full_like(boundaries, -2)),
            torch.nextafter(boundaries, torch.full_like(boundaries, 2)),
            torch.tensor([-3.0, -1.5, 1.5, 3.0, 0.0, -0.0, 1e-30, -1e-30], dtype=dtype),
            torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=dtype) * 2.4 - 1.2,
        ]
    ).reshape(-1, 1)
    K = weights_per_link("continuous", 2, segments)
    phi, rows = active_rows(x, chebyshev_lobatto(2, dtype), segments, 1, K)
    expected = torch.zeros(x.shape[0], K, dtype=dtype).scatter(1, rows.flatten(1), phi.flatten(1))
    assert torch.equal(layer_kernel.piecewise_basis(x, K, 2, segments, 1), expected)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("outputs", [32, 37])
def test_kernel_results_do_not_depend_on_where_rows_start(outputs):
    # The kernels use rows of a whole number of vectors in place only when they start on a 64-byte boundary;
    # one float in, the same data goes through their padded copies.
    n, s, step = 2, 16, 1
    torch.manual_seed(0)
    x = torch.rand(40, 6) * 2 - 1
    weight = torch.randn(6, s + 1, outputs)

    def shifted(tensor):
        storage = torch.empty(tensor.numel() + 1)
        moved = storage[1:].view_as(tensor)
        moved.copy_(tensor)
        return moved

    grad = torch.randn(40, outputs)
    for op, arguments in (
        (layer_kernel.piecewise, (x, weight)),
        (layer_kernel.piecewise_grad_weight, (x, grad, weight)),
        (layer_kernel.piecewise_grad_input, (x, grad, weight)),
    ):
        aligned = op(*arguments, n, s, step)
        assert torch.equal(op(*map(shifted, arguments), n, s, step), aligned)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize(
    ("kind", "n", "s"),
    [("continuous", 2, 16), ("discontinuous", 2, 8), ("discontinuous", 3, 5), ("continuous", 7, 4)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("outputs", [5, 32, 37, 83])
@pytest.mark.parametrize("rows", [1, 9, 53])
def test_kernel_matches_gather_over_vector_tails_and_generic_node_counts(kind, n, s, dtype, outputs, rows):
    # Outputs: fewer than one vector, whole vectors (rows used in place), whole vectors plus a part (rows
    # padded), and 83 (blocks of two widths in the tiled passes); n = 7 takes the kernels' run-time-n code,
    # n = 2 the difference rows of dL/dx (continuous: neighbouring rows; discontinuous: rows 2j and 2j + 1).
    # 9 rows take the bucketed passes, 53 the tiled ones (at least a table's K rows per input): buckets of
    # every size, some empty, odd counts for the multi-sample loops and a part-filled last group of rows.
    # 1 row (at most a quarter of a row per segment) takes the direct forward pass.
    layer = make(kind, n, s, inputs=6, outputs=outputs, path="kernel", dtype=dtype, initialization="uniform")
    x = (torch.rand(rows, 6, dtype=dtype) * 2.2 - 1.1).requires_grad_()
    weights = torch.randn(rows, outputs, dtype=dtype)
    results = []
    for path in ("kernel", "gather"):
        layer.path = path
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        (y * weights).sum().backward()
        results.append((y.detach(), x.grad, layer.weight.grad))
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for ours, expected in zip(*results, strict=True):
        assert relative_error(ours, expected) <= tolerance


@pytest.fixture(scope="module")
def portable_kernel():
    """kernel.cpp built without AVX-512 (and at -O1, which compiles in a fraction of -O3's time): where the
    native build loads and stores a vector's part with a mask, this one takes the portable code (on a CPU
    without AVX-512 both builds take it)."""
    if not layer_kernel.available():
        pytest.skip("no C++ compiler")
    library = native.bind(
        layer_kernel.SOURCE, layer_kernel.SIGNATURES, instead="nothing", flags=("-mno-avx512f", "-O1")
    )
    if library is None:
        pytest.skip("the compiler does not take -mno-avx512f")
    return library


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "s"), [(2, 8), (3, 4), (7, 2)])
@pytest.mark.parametrize("outputs", [5, 37, 83])
@pytest.mark.parametrize("rows", [1, 9, 53])
def test_kernel_without_avx512_computes_the_same_results(portable_kernel, n, s, dtype, outputs, rows):
    # Outputs with a part-filled last vector (5: only that one), in every pass and path (1 row: direct
    # forward; 9: bucketed; 53: tiled), and the codes' passes. The same sums, to rounding: -O1 contracts
    # fewer multiply-adds than -O3.
    torch.manual_seed(0)
    K, step = weights_per_link("continuous", n, s), stride("continuous", n)
    x = torch.rand(rows, 6, dtype=dtype) * 2.2 - 1.1
    weight = torch.randn(6, K, outputs, dtype=dtype)
    grad = torch.randn(rows, outputs, dtype=dtype)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for name in ("forward", "grad_weight", "grad_input"):
        native_result = layer_kernel.run_pass(name, x, weight, grad, n, s, step)
        portable = layer_kernel.run_pass(name, x, weight, grad, n, s, step, library=portable_kernel)
        assert relative_error(portable, native_result) <= tolerance, name
    native_pair = layer_kernel.run_grad_both(x, weight, grad, n, s, step)
    portable_pair = layer_kernel.run_grad_both(x, weight, grad, n, s, step, library=portable_kernel)
    for native_result, portable in zip(native_pair, portable_pair, strict=True):
        assert relative_error(portable, native_result) <= tolerance, "grad_both"
    codes = torch.randint(0, 128, (rows * 20, 6), dtype=torch.uint8)  # from 256 rows on, through the table
    code_weight = torch.randn(6, 129, outputs, dtype=dtype)
    code_grad = torch.randn(rows * 20, outputs, dtype=dtype)
    for name in ("codes_forward", "codes_grad_weight"):
        native_result = layer_kernel.run_codes_pass(name, codes, code_weight, code_grad, 2, 128, 1)
        portable = layer_kernel.run_codes_pass(
            name, codes, code_weight, code_grad, 2, 128, 1, library=portable_kernel
        )
        assert relative_error(portable, native_result) <= tolerance, name


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("kind", "n", "s", "inputs"),
    [("continuous", 2, 8, 37), ("discontinuous", 3, 4, 5), ("discontinuous", 1, 16, 19)],
)
def test_the_three_forward_passes_add_the_same_products_in_the_same_order(kind, n, s, inputs, dtype):
    # A batch of at least K rows takes the tiled forward pass, one of 5 rows (more than a quarter of a row per
    # segment, fewer than K) the bucketed one, one row the direct one: the same sums, bit for bit. 37 inputs
    # are more than one slice of inputs and not a whole number of them.
    torch.manual_seed(0)
    K, step = weights_per_link(kind, n, s), stride(kind, n)
    x = torch.rand(70, inputs, dtype=dtype) * 2.2 - 1.1
    weight = torch.randn(inputs, K, 83, dtype=dtype)
    batch = layer_kernel.piecewise(x, weight, n, s, step)
    for size in (5, 1):
        assert 4 * size > s if size == 5 else 4 * size <= s
        in_parts = torch.cat([layer_kernel.piecewise(part, weight, n, s, step) for part in x.split(size)])
        assert torch.equal(batch, in_parts)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "s"), [(2, 100), (3, 150), (2, 600)])
def test_forward_slices_larger_than_l1_add_the_same_products(n, s, dtype):
    # K = 101, 301 and 601 against K + 20 rows: the tiled forward pass, its slices of two inputs' rows of 4
    # vectors past L1 (kernel.cpp, forward_budget; 601 at its cap, fewer vectors), 83 outputs in blocks of
    # two widths (and of three in float64), 5 inputs in two whole slices and a short one. The same sums, bit
    # for bit, as the direct pass row by row, and the dense basis's to rounding.
    torch.manual_seed(0)
    K, step = weights_per_link("continuous", n, s), stride("continuous", n)
    x = torch.rand(K + 20, 5, dtype=dtype) * 2.2 - 1.1
    weight = torch.randn(5, K, 83, dtype=dtype)
    batch = layer_kernel.piecewise(x, weight, n, s, step)
    row_by_row = torch.cat([layer_kernel.piecewise(row, weight, n, s, step) for row in x.split(1)])
    assert torch.equal(batch, row_by_row)
    expected = layer_kernel.piecewise_basis(x, K, n, s, step) @ weight.reshape(-1, 83)
    assert relative_error(batch, expected) <= (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("outputs", [16, 64, 128])
@pytest.mark.parametrize(
    ("kind", "n", "s"), [("continuous", 2, 32), ("discontinuous", 3, 16), ("discontinuous", 1, 40)]
)
def test_the_forward_pass_reading_the_table_in_place_adds_the_same_products(kind, n, s, outputs, dtype):
    # 48 rows, at least K, with rows of whole aligned vectors up to one register block (8 vectors: 128 floats,
    # 64 doubles) and K large against the rows (kernel.cpp, reads_in_place): the table is read in place, in
    # groups of inputs (with the widest rows 37 inputs make several, the last one short). The same sums, bit
    # for bit, as the bucketed pass (parts of 5 rows) and the direct one (single rows); 128 doubles are two
    # blocks and take the tiled pass, also the same sums.
    torch.manual_seed(0)
    K, step = weights_per_link(kind, n, s), stride(kind, n)
    x = torch.rand(48, 37, dtype=dtype) * 2.2 - 1.1
    weight = torch.randn(37, K, outputs, dtype=dtype)
    batch = layer_kernel.piecewise(x, weight, n, s, step)
    for size in (5, 1):
        in_parts = torch.cat([layer_kernel.piecewise(part, weight, n, s, step) for part in x.split(size)])
        assert torch.equal(batch, in_parts)
    expected = layer_kernel.piecewise_basis(x, K, n, s, step) @ weight.reshape(-1, outputs)
    assert relative_error(batch, expected) <= (1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
def test_the_forward_pass_reading_the_table_in_place_takes_a_large_batch_in_chunks():
    # One thread's 4100 rows, with 600 segments (K = 601 against 4100 rows: read in place), go in two chunks
    # of 2050 rows: the same sums, bit for bit, as the two halves alone, and the dense basis's to rounding.
    torch.manual_seed(0)
    n, s, step = 2, 600, 1
    x = torch.rand(4100, 3, dtype=torch.float64) * 2.2 - 1.1
    weight = torch.randn(3, s + 1, 16, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        whole = layer_kernel.piecewise(x, weight, n, s, step)
        halves = torch.cat([layer_kernel.piecewise(half, weight, n, s, step) for half in x.split(2050)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(whole, halves)
    expected = layer_kernel.piecewise_basis(x, s + 1, n, s, step) @ weight.reshape(-1, 16)
    assert relative_error(whole, expected) <= 1e-12


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
def test_tiled_passes_take_a_large_batch_in_chunks():
    # One thread's 4100 rows go through the tiled passes in two chunks of 2050: the forward pass still equals
    # the bucketed one bit for bit, dL/dx (n = 3) the gather path.
    torch.manual_seed(0)
    n, s, step = 3, 2, 2
    layer = make("continuous", n, s, inputs=3, outputs=20, path="kernel", dtype=torch.float64)
    x = (torch.rand(4100, 3, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    weights = torch.randn(4100, 20, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y = layer(x)
        (y * weights).sum().backward()
    finally:
        torch.set_num_threads(threads)
    one_by_one = torch.cat(
        [layer_kernel.piecewise(row, layer.weight.detach(), n, s, step) for row in x.detach().split(1)]
    )
    assert torch.equal(y.detach(), one_by_one)
    grad_kernel = x.grad
    x.grad = None
    layer.path = "gather"
    (layer(x) * weights).sum().backward()
    assert relative_error(grad_kernel, x.grad) <= 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    segments = 1 if kind == "polynomial" else 32
    layer = make(kind, 3, segments, inputs=5, outputs=6, path="auto", dtype=torch.float32)
    x = torch.rand(7, 5) * 2.2 - 1.1
    expected = layer(x)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert layer(x.cuda()).isfinite().all()


@pytest.mark.parametrize("initialization", ["linear", "uniform"])
def test_every_layer_gets_a_gradient_at_initialization(initialization):
    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        HighOrderLinear(8, 8, 3, 4, initialization=initialization),
        normalization("max_abs", 8),
        HighOrderLinear(8, 8, 2, 16, kind="discontinuous", initialization=initialization),
        normalization("max_center", 8),
        HighOrderLinear(8, 2, 3, 1, kind="polynomial", initialization=initialization),
    )
    layers(torch.rand(16, 8) * 2 - 1).square().mean().backward()
    for layer in layers[::2]:
        assert layer.weight.grad.abs().sum() > 0


def test_constant_random_is_constant_per_link_like_the_package():
    layer = HighOrderLinear(4, 3, 3, 2, initialization="constant_random")
    assert torch.equal(layer.weight, layer.weight[:, :1].expand_as(layer.weight))
    assert (layer.weight >= 0).all() and (layer.weight <= 1 / 4).all()


def test_linear_initialization_is_a_line_at_the_nodes():
    layer = make("continuous", 3, 4, initialization="linear")
    x = torch.linspace(-1, 1, 11, dtype=torch.float64).unsqueeze(-1).expand(-1, 3)
    y = layer(x)
    second_difference = y[2:] - 2 * y[1:-1] + y[:-2]
    assert second_difference.abs().max() < 1e-6  # the line was drawn in float32


@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_normalizations(kind):
    module = normalization(kind, 6)
    x = torch.randn(3, 4, 6) * 5
    y = module(x)
    assert y.shape == x.shape
    if kind in {"max_abs", "max_center"}:
        assert y.abs().max() <= 1
    if kind == "layer":
        assert {name for name, _ in module.named_parameters()} == {"weight", "bias"}
        assert set(module.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize(
    ("kind", "n", "s", "new_n", "new_s"),
    [
        ("continuous", 2, 4, 2, 8),
        ("continuous", 3, 2, 5, 6),
        ("discontinuous", 2, 3, 4, 6),
        ("discontinuous", 1, 2, 1, 8),
        ("polynomial", 3, 1, 4, 3),
    ],
)
def test_refinement_reproduces_the_function(kind, n, s, new_n, new_s):
    layer = make(kind, n, s, bias=True, initialization="uniform")
    refined = refine(layer, segments=new_s, n=new_n)
    assert (refined.n, refined.segments) == (new_n, new_s)
    x = inputs_inside_and_outside(rows=200).detach().clamp(-1, 1)
    torch.testing.assert_close(refined(x), layer(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "n", "segments"),
    [
        ("continuous", 2, 128),
        ("continuous", 3, 128),
        ("discontinuous", 2, 5),
        ("continuous", 2, 256),  # codes reach only every other segment: dL/dW is zero on the others' rows
        ("polynomial", 3, 1),
    ],
)
@pytest.mark.parametrize(
    ("lookup", "rows"),
    # the C++ kernel builds its table from 256 rows on and gathers below that
    [("kernel", 18), ("kernel", 300), ("table", 18)],
)
def test_character_input_is_the_linear_layer_on_unit_codes(kind, n, segments, lookup, rows, monkeypatch):
    if lookup == "table":
        monkeypatch.setattr(layer_kernel, "supports", lambda *tensors: False)
    torch.manual_seed(0)
    layer = CharacterInput(6, 7, n, segments, kind).double()
    codes = torch.randint(0, 128, (2, rows // 2, 6), dtype=torch.uint8)
    y = layer(codes)
    linear = layer.as_linear()
    assert linear.weight is layer.weight
    expected = linear(codes_to_unit(codes).double())
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    y.square().sum().backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    expected.square().sum().backward()
    torch.testing.assert_close(grad, layer.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("outputs", [5, 32, 37, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [18, 300])
def test_character_kernel_matches_gather_over_vector_tails_and_thread_counts(outputs, dtype, rows):
    # Outputs: part of a vector, whole vectors used in place, whole vectors plus a part (padded dL/dy), and
    # 300: a block of 16 vectors then narrower ones. 300 rows take the table, 18 the gather pass.
    torch.manual_seed(0)
    layer = CharacterInput(5, outputs, 2, 128, initialization="uniform").to(dtype)
    codes = torch.randint(0, 128, (rows, 5))
    weights = torch.randn(rows, outputs, dtype=dtype)
    linear = layer.as_linear()
    linear.path = "gather"
    results = []
    threads = torch.get_num_threads()
    try:
        for module, inputs, count in (
            (linear, codes_to_unit(codes).to(dtype), 1),
            (layer, codes, 1),
            (layer, codes, 2),
        ):
            torch.set_num_threads(count)
            layer.zero_grad()
            y = module(inputs)
            (y * weights).sum().backward()
            results.append((y.detach(), layer.weight.grad))
    finally:
        torch.set_num_threads(threads)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    for ours, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, expected, rtol=tolerance, atol=tolerance)
    for one, two in zip(results[1], results[2], strict=True):
        assert torch.equal(one, two)


def test_character_kernel_table_is_torch_memory_padded_to_whole_vectors():
    # Below CODES_TABLE_ROWS the forward pass gathers and needs no table; from there on one row per code and
    # input, its width rounded up to 64 bytes (16 float32, 8 float64).
    rows = layer_kernel.CODES_TABLE_ROWS
    weight = torch.empty(5, 129, 37)
    assert layer_kernel.codes_table(torch.zeros(rows - 1, 5, dtype=torch.uint8), weight).numel() == 0
    codes = torch.zeros(rows, 5, dtype=torch.uint8)
    assert layer_kernel.codes_table(codes, weight).shape == (5, 128, 48)
    assert layer_kernel.codes_table(codes, weight.double()).shape == (5, 128, 40)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
def test_character_kernel_weight_gradient_overwrites_its_buffer():
    # 512 segments: codes reach only every fourth one and not the last rows, and 3 rows leave most codes
    # without a sample; dL/dW must come back with zeros there, not the NaN of the buffer handed to the kernel.
    torch.manual_seed(0)
    codes = torch.randint(0, 128, (3, 4), dtype=torch.uint8)
    weight, grad = torch.randn(4, 513, 37), torch.randn(3, 37)
    result, expected = torch.full_like(weight, float("nan")), torch.zeros_like(weight)
    for buffer in (result, expected):
        tensors = [codes, grad, buffer]
        layer_kernel._invoke("codes_grad_weight", tensors, 3, weight, 2, 512, 1, strides=grad.stride())
    assert torch.equal(result, expected) and (expected == 0).float().mean() > 0.9


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("outputs", [37, 32])
@pytest.mark.parametrize(("n", "s"), [(2, 16), (2, 128), (3, 8)])
def test_kernel_passes_read_dl_dy_with_any_strides(n, s, outputs, dtype):
    # A sum's dL/dy is one value broadcast (strides 0); the passes read it, a transposed one, a slice of a
    # wider one and every other row of a taller one as they are, tiled and bucketed, with rows of whole
    # vectors (32) or not (37), and give the bits they give on a contiguous copy.
    torch.manual_seed(0)
    rows, K, step = 40, weights_per_link("continuous", n, s), stride("continuous", n)
    x = torch.rand(rows, 5, dtype=dtype) * 2.2 - 1.1
    weight = torch.randn(5, K, outputs, dtype=dtype)
    codes = torch.randint(0, 128, (rows, 5), dtype=torch.uint8)
    code_weight = torch.randn(5, 129, outputs, dtype=dtype)
    for grad in (
        torch.tensor(0.7, dtype=dtype).expand(rows, outputs),
        torch.randn(outputs, rows, dtype=dtype).t(),
        torch.randn(rows, outputs + 11, dtype=dtype)[:, 3 : 3 + outputs],
        torch.randn(2 * rows, outputs, dtype=dtype)[::2],
    ):
        assert not grad.is_contiguous()
        plain = grad.contiguous()
        for name in ("grad_weight", "grad_input"):
            strided = layer_kernel.run_pass(name, x, weight, grad, n, s, step)
            assert torch.equal(strided, layer_kernel.run_pass(name, x, weight, plain, n, s, step)), name
        both = layer_kernel.run_grad_both(x, weight, grad, n, s, step)
        expected = layer_kernel.run_grad_both(x, weight, plain, n, s, step)
        assert all(torch.equal(a, b) for a, b in zip(both, expected, strict=True))
        on_codes = layer_kernel.run_codes_pass("codes_grad_weight", codes, code_weight, grad, 2, 128, 1)
        expected = layer_kernel.run_codes_pass("codes_grad_weight", codes, code_weight, plain, 2, 128, 1)
        assert torch.equal(on_codes, expected)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize(("n", "s", "outputs"), [(2, 128, 250), (3, 8, 250), (5, 2, 200)])
def test_kernel_weight_gradient_block_by_block(n, s, outputs):
    # Past 512 KiB of dL/dy (700 rows), in rows of more than one block, dL/dW alone takes the blocks outermost
    # over a block-major copy of dL/dy (kernel.cpp, by_blocks): the dense basis's sums, the same bits with one
    # thread and with two, from a broadcast or transposed dL/dy as from its contiguous copy.
    torch.manual_seed(0)
    K, step = weights_per_link("continuous", n, s), stride("continuous", n)
    x = torch.rand(700, 6, dtype=torch.float64) * 2.2 - 1.1
    weight = torch.randn(6, K, outputs, dtype=torch.float64)
    before = torch.get_num_threads()
    for grad in (
        torch.randn(700, outputs, dtype=torch.float64),
        torch.tensor(0.3, dtype=torch.float64).expand(700, outputs),
        torch.randn(outputs, 700, dtype=torch.float64).t(),
    ):
        expected = (layer_kernel.piecewise_basis(x, K, n, s, step).T @ grad).reshape(weight.shape)
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(layer_kernel.run_pass("grad_weight", x, weight, grad, n, s, step))
        torch.set_num_threads(before)
        plain = layer_kernel.run_pass("grad_weight", x, weight, grad.contiguous(), n, s, step)
        assert relative_error(results[0], expected) <= 1e-12
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], plain)


@pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")
@pytest.mark.parametrize("codes", [False, True])
def test_kernel_layers_take_the_broadcast_gradient_of_a_sum_as_it_is(codes):
    torch.manual_seed(0)
    if codes:
        layer, x = CharacterInput(6, 37, 2, 128), torch.randint(0, 128, (300, 6))
    else:
        layer = make("continuous", 2, 128, inputs=6, outputs=37, path="kernel", dtype=torch.float32)
        x = (torch.rand(300, 6) * 2 - 1).requires_grad_()
    layer(x).sum().backward()
    summed = [t.grad.clone() for t in (layer.weight, x) if t.grad is not None]
    layer.weight.grad = x.grad = None
    layer(x).backward(torch.ones(300, 37))
    given = [t.grad for t in (layer.weight, x) if t.grad is not None]
    assert len(summed) == len(given) == (1 if codes else 2)
    assert all(torch.equal(a, b) for a, b in zip(summed, given, strict=True))


def test_codes_to_unit_centres():
    x = codes_to_unit(torch.tensor([0, 63, 64, 127]))
    torch.testing.assert_close(x, torch.tensor([-1 + 1 / 128, -1 / 128, 1 / 128, 1 - 1 / 128]))
    with pytest.raises(ValueError, match="integer"):
        CharacterInput(2, 3, 2)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"0\.\.127"):
        CharacterInput(2, 3, 2)(torch.tensor([[5, 128]]))
