"""Eager calls of the CPU kernel's custom ops (layers/eager.py): the same results as the ops to the bit, the
ops themselves under torch.compile, and no trip through the dispatcher otherwise; and the ops themselves
through torch.library.opcheck."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from langinterp.layers import CharacterInput, HighOrderLinear
from langinterp.layers import kernel as layer_kernel
from langinterp.layers.eager import through_custom_ops

pytestmark = pytest.mark.skipif(not layer_kernel.available(), reason="no C++ compiler")


def leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone().requires_grad_()


def piecewise_case():
    """(x, weight) of a continuous layer, n = 3, 4 segments, and the op's remaining arguments."""
    x = torch.rand(300, 5, dtype=torch.float64) * 2.4 - 1.2
    weight = torch.randn(5, 9, 7, dtype=torch.float64)
    return (x, weight), (3, 4, 2)


def fused_case():
    """(x, weight) of a continuous layer, n = 2, 128 segments: its backward pass takes dL/dx and dL/dW in one
    pass over the buckets (kernel.cpp's grad_both)."""
    x = torch.rand(300, 5, dtype=torch.float64) * 2.4 - 1.2
    weight = torch.randn(5, 129, 7, dtype=torch.float64)
    return (x, weight), (2, 128, 1)


def codes_case():
    """Codes enough for the forward pass's table (kernel.CODES_TABLE_ROWS), and their layer's weights."""
    codes = torch.randint(0, 128, (300, 4), dtype=torch.uint8)
    weight = torch.randn(4, 129, 7, dtype=torch.float64)
    return (codes, weight), (2, 128, 1)


def basis_case(drop):
    x = torch.rand(300, 5, dtype=torch.float64) * 2.4 - 1.2
    return (x,), (9, 3, 4, 2, drop)


CASES = {
    "piecewise": (layer_kernel.apply_piecewise, layer_kernel.piecewise, piecewise_case),
    "piecewise, n = 2": (layer_kernel.apply_piecewise, layer_kernel.piecewise, fused_case),
    "codes": (layer_kernel.apply_character_lookup, layer_kernel.character_lookup, codes_case),
    "basis": (layer_kernel.apply_piecewise_basis, layer_kernel.piecewise_basis, lambda: basis_case(0)),
    "reduced basis": (
        layer_kernel.apply_piecewise_basis,
        layer_kernel.piecewise_basis,
        lambda: basis_case(1),
    ),
}


def run(function, tensors, sizes):
    """The output and the gradients of every floating-point input, for a fixed upstream gradient."""
    inputs = [leaf(t) if t.is_floating_point() else t for t in tensors]
    y = function(*inputs, *sizes)
    torch.manual_seed(1)
    y.backward(torch.randn_like(y))
    return [y.detach()] + [t.grad for t in inputs if t.is_floating_point()]


@pytest.mark.parametrize("case", CASES)
def test_eager_calls_match_the_custom_ops_bit_for_bit(case):
    eager, op, make = CASES[case]
    torch.manual_seed(0)
    tensors, sizes = make()
    ours, theirs = run(eager, tensors, sizes), run(op, tensors, sizes)
    assert len(ours) == len(theirs) >= 2
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", CASES)
def test_eager_calls_with_no_graph_to_record_run_the_body_alone(case, monkeypatch):
    """Under no_grad, or when no input needs a gradient (generation, evaluation), an eager call skips the
    autograd.Function: the op's body alone, the same result to the bit."""
    eager, op, make = CASES[case]
    torch.manual_seed(0)
    tensors, sizes = make()
    expected = op(*tensors, *sizes)
    leaves = [leaf(t) if t.is_floating_point() else t for t in tensors]
    applied = []
    original = torch.autograd.Function.apply.__func__

    def counted(cls, *args, **kwargs):
        applied.append(cls)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(counted))
    plain = eager(*tensors, *sizes)
    with torch.no_grad():
        quiet = eager(*leaves, *sizes)
    assert applied == []
    assert torch.equal(plain, expected) and torch.equal(quiet, expected)
    recorded = eager(*leaves, *sizes)
    assert len(applied) == 1 and recorded.grad_fn is not None
    assert torch.equal(recorded.detach(), expected)


def test_eager_calls_refuse_a_second_derivative():
    (x, weight), sizes = piecewise_case()
    x = leaf(x)
    (grad,) = torch.autograd.grad(layer_kernel.apply_piecewise(x, weight, *sizes).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


def custom_ops_called(layer, x) -> set[str]:
    """Names of the langinterp custom ops that reach the dispatcher in a forward and backward pass."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x).sum().backward()
    return {event.name for event in prof.events() if event.name.startswith("langinterp::")}


def layers_and_inputs():
    torch.manual_seed(0)
    layer = HighOrderLinear(5, 7, 3, 4)
    layer.path = "kernel"
    x = torch.rand(300, 5, requires_grad=True)
    return [(layer, x), (CharacterInput(4, 7, 2), torch.randint(0, 128, (300, 4)))]


def test_eager_layers_do_not_go_through_the_dispatcher_unless_told_to():
    expected = [
        {"langinterp::piecewise", "langinterp::piecewise_grads"},
        {"langinterp::character_lookup", "langinterp::character_lookup_grad_weight"},
    ]
    for (layer, x), ops in zip(layers_and_inputs(), expected, strict=True):
        assert custom_ops_called(layer, x) == set()
        with through_custom_ops():
            assert custom_ops_called(layer, x) == ops


def test_compiled_layers_call_the_custom_ops():
    graphs = []

    def recording(graph, example_inputs):
        graphs.append(graph.code)
        return graph.forward

    for (layer, x), op in zip(layers_and_inputs(), ["piecewise", "character_lookup"], strict=True):
        graphs.clear()
        compiled = torch.compile(layer, backend=recording, fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x))
        assert any(f"langinterp.{op}" in code for code in graphs)


def test_meta_and_fake_tensors_take_the_ops_fake_implementations():
    from torch._subclasses.fake_tensor import FakeTensorMode

    (x, weight), sizes = piecewise_case()
    y = layer_kernel.apply_piecewise(x.to("meta").requires_grad_(), weight.to("meta"), *sizes)
    assert y.device.type == "meta" and y.shape == (300, 7)
    y.sum().backward()
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert layer_kernel.apply_piecewise(fake, mode.from_tensor(weight), *sizes).shape == (300, 7)


def opcheck_cases():
    """Every custom op of the CPU kernel with arguments for torch.library.opcheck: n = 2 with 128 segments
    (the joint backward pass), n = 3 with 4 (the two passes), codes, and the dense paths' basis ops."""
    torch.manual_seed(0)
    (x, weight), sizes = fused_case()
    (x3, weight3), sizes3 = piecewise_case()
    (codes, code_weight), code_sizes = codes_case()
    (basis_x,), basis_sizes = basis_case(1)
    grad, grad3, code_grad = (torch.randn(300, 7, dtype=torch.float64) for _ in range(3))
    basis_grad = torch.randn(300, 5 * 8, dtype=torch.float64)  # K - drop columns per input
    return {
        "piecewise": (layer_kernel.piecewise, (leaf(x), leaf(weight), *sizes)),
        "piecewise, n = 3": (layer_kernel.piecewise, (leaf(x3), leaf(weight3), *sizes3)),
        "piecewise_grads": (layer_kernel.piecewise_grads, (x, grad, weight, *sizes)),
        "piecewise_grads, n = 3": (layer_kernel.piecewise_grads, (x3, grad3, weight3, *sizes3)),
        "piecewise_grad_input": (layer_kernel.piecewise_grad_input, (x, grad, weight, *sizes)),
        "piecewise_grad_weight": (layer_kernel.piecewise_grad_weight, (x, grad, weight, *sizes)),
        "character_lookup": (layer_kernel.character_lookup, (codes, leaf(code_weight), *code_sizes)),
        "character_lookup_grad_weight": (
            layer_kernel.character_lookup_grad_weight,
            (codes, code_grad, code_weight, *code_sizes),
        ),
        "piecewise_basis": (layer_kernel.piecewise_basis, (leaf(basis_x), *basis_sizes)),
        "piecewise_basis_grad": (layer_kernel.piecewise_basis_grad, (basis_x, basis_grad, *basis_sizes)),
    }


@pytest.mark.parametrize("case", list(opcheck_cases()))
def test_custom_ops_pass_torch_opcheck(case):
    # Schema, fake implementation against the real one, autograd registration, and the op traced by AOT
    # dispatch with dynamic shapes (what torch.compile relies on).
    op, arguments = opcheck_cases()[case]
    results = torch.library.opcheck(op, arguments)
    assert set(results.values()) == {"SUCCESS"}, results
