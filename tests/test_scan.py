"""The fused CPU selective-scan kernel: agrees with the sequential reference in y and every gradient, passes
gradcheck, is what "auto" picks on a CPU (and not when switched off), and trains the mamba recipe."""

import pytest
import torch
import torch.nn.functional as F

from langinterp.models import build_model, scan_kernel
from langinterp.models.scan import SCANS, chunked_scan, scan_function, sequential_scan
from langinterp.recipe import load_recipe
from langinterp.schema import MAMBA_TABLE

pytestmark = pytest.mark.skipif(not scan_kernel.available(), reason="no CPU scan kernel can be built here")


def scan_inputs(
    batch: int, length: int, channels: int, states: int, dtype: torch.dtype, seed: int = 0
) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return [
        draw(batch, length, channels),
        torch.rand(batch, length, channels, generator=generator, dtype=dtype),
        -torch.rand(channels, states, generator=generator, dtype=dtype) * 8,
        draw(batch, length, states),
        draw(batch, length, states),
        draw(channels),
    ]


def outputs_and_gradients(scan, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    inputs = [t.detach().requires_grad_() for t in inputs]
    y = scan(*inputs)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = weights.to(y.dtype)  # the same weights for every dtype
    return [y, *torch.autograd.grad((y * weights).sum(), inputs)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


# (batch, length, channels, states): full SIMD blocks of channels, leftover channels, both, a single
# channel; odd lengths and length 1; batch 1; N not a multiple of 8.
SHAPES = [(2, 7, 6, 5), (1, 1, 3, 1), (3, 33, 37, 9), (2, 40, 32, 16), (1, 5, 16, 8), (2, 19, 1, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_equals_the_sequential_reference_in_float64(shape: tuple[int, int, int, int]) -> None:
    inputs = scan_inputs(*shape, torch.float64)
    got = outputs_and_gradients(scan_kernel.kernel_scan, inputs)
    want = outputs_and_gradients(sequential_scan, inputs)
    for name, g, w in zip(("y", "du", "ddelta", "dA", "dB", "dC", "dD"), got, want, strict=True):
        assert g.shape == w.shape
        assert relative_error(g, w) <= 1e-10, name


@pytest.mark.parametrize("shape", [(2, 50, 37, 9), (3, 64, 128, 32)])
def test_kernel_matches_in_float32(shape: tuple[int, int, int, int]) -> None:
    inputs = scan_inputs(*shape, torch.float32)
    got = outputs_and_gradients(scan_kernel.kernel_scan, inputs)
    want = outputs_and_gradients(sequential_scan, [t.double() for t in inputs])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        assert relative_error(g.double(), w) <= 1e-5


def test_kernel_stays_finite_when_the_decays_underflow() -> None:
    """delta * A far below the smallest float exponent: the decays are 0 and nothing becomes NaN."""
    inputs = scan_inputs(2, 30, 20, 6, torch.float32)
    inputs[1] = inputs[1] * 40
    got = outputs_and_gradients(scan_kernel.kernel_scan, inputs)
    want = outputs_and_gradients(sequential_scan, [t.double() for t in inputs])
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        assert relative_error(g.double(), w) <= 1e-5


def test_kernel_passes_gradcheck() -> None:
    inputs = [t.requires_grad_() for t in scan_inputs(2, 5, 3, 4, torch.float64)]
    assert torch.autograd.gradcheck(scan_kernel.kernel_scan, inputs)


def test_kernel_rejects_mismatched_shapes() -> None:
    u, delta, A, B, C, D = scan_inputs(2, 5, 3, 4, torch.float64)
    with pytest.raises(ValueError, match="B has shape"):
        scan_kernel.kernel_scan(u, delta, A, B[:, :4], C, D)


def test_auto_picks_the_kernel_on_cpu_and_chunked_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert scan_function("auto", cpu) is scan_kernel.kernel_scan
    assert scan_function("cpu_kernel", cpu) is scan_kernel.kernel_scan
    monkeypatch.setenv("LANGINTERP_KERNEL", "0")
    assert scan_function("auto", cpu) is chunked_scan


def test_the_recipe_lists_every_scan() -> None:
    assert MAMBA_TABLE["scan"].choices == SCANS


def test_a_training_step_of_the_mamba_recipe_uses_the_kernel_and_matches_sequential() -> None:
    torch.manual_seed(0)
    recipe = load_recipe("recipes/mamba.toml", ["model.layers=2", "data.context=20"])
    model = build_model(recipe).double()
    codes = torch.randint(0, 128, (3, 21))
    gradients = {}
    for scan in ("auto", "sequential"):
        for mixer in model.mixers:
            mixer.scan = scan
        model.zero_grad()
        logits = model(codes[:, :-1])
        F.cross_entropy(logits.reshape(-1, 128), codes[:, 1:].reshape(-1)).backward()
        gradients[scan] = [p.grad.clone() for p in model.parameters()]
    for got, want in zip(gradients["auto"], gradients["sequential"], strict=True):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_results_do_not_depend_on_the_thread_count() -> None:
    """Partial sums are per task and added in a fixed order, so every thread count gives the same bits."""
    inputs = scan_inputs(4, 300, 70, 20, torch.float32)
    grad = torch.randn(4, 300, 70, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            y = scan_kernel.kernel_scan(*inputs)
            results.append([y, *scan_kernel.kernel_scan_backward(*inputs, grad)])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
