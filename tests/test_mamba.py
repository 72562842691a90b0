"""Mamba: the selective scans agree, stepping equals the parallel form, causality, the step-0 loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from langinterp.models import build_model
from langinterp.models.scan import chunked_scan, cuda_scan_available, selective_scan, sequential_scan
from langinterp.recipe import load_recipe

pytestmark = pytest.mark.gpu  # exercises CUDA where there is a GPU (tests/conftest.py)

TINY = ["model.d_model=8", "model.layers=2", "model.d_state=4", "model.expand=2", "data.context=12"]


def scan_inputs(
    length: int, dtype: torch.dtype, delta_scale: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    batch, channels, states = 2, 6, 5

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    delta = torch.rand(batch, length, channels, generator=generator, dtype=dtype) * delta_scale
    A = -torch.rand(channels, states, generator=generator, dtype=dtype) * 8
    return (
        draw(batch, length, channels),
        delta,
        A,
        draw(batch, length, states),
        draw(batch, length, states),
        draw(channels),
    )


@pytest.mark.parametrize("length", [1, 2, 7, 16, 50, 130])
def test_chunked_scan_equals_the_sequential_reference_in_float64(length: int) -> None:
    inputs = scan_inputs(length, torch.float64)
    expected = sequential_scan(*inputs)
    for chunk in (None, 1, 3, 64):
        assert torch.allclose(chunked_scan(*inputs, chunk=chunk), expected, rtol=0, atol=1e-10)


def test_chunked_scan_stays_finite_and_exact_when_the_decays_are_huge() -> None:
    """delta * A far below -88 in float32: a log-space cumulative sum would overflow exp(+sum) here."""
    inputs = scan_inputs(64, torch.float32, delta_scale=40.0)
    y = chunked_scan(*inputs, chunk=16)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, sequential_scan(*inputs), rtol=1e-5, atol=1e-5)


def test_chunked_scan_matches_in_float32_and_in_its_gradients() -> None:
    inputs = [t.requires_grad_() for t in scan_inputs(40, torch.float32)]
    chunked = chunked_scan(*inputs)
    reference = sequential_scan(*inputs)
    assert torch.allclose(chunked, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(chunked)
    got = torch.autograd.grad((chunked * weights).sum(), inputs)
    want = torch.autograd.grad((reference * weights).sum(), inputs)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-4)


def test_selective_scan_computes_bf16_inputs_in_float32() -> None:
    inputs = scan_inputs(20, torch.float32)
    low = [t.to(torch.bfloat16) for t in inputs]
    y = selective_scan(*low, method="chunked")
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), sequential_scan(*(t.float() for t in low)), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not cuda_scan_available(torch.device("cuda")), reason="needs mamba-ssm and CUDA")
def test_cuda_kernel_agrees_with_the_pure_pytorch_scans() -> None:  # pragma: no cover - GPU machines only
    inputs = [t.cuda().requires_grad_() for t in scan_inputs(300, torch.float32)]
    cuda = selective_scan(*inputs, method="auto")
    chunked = chunked_scan(*inputs)
    assert torch.allclose(cuda, chunked, rtol=1e-4, atol=1e-4)
    assert torch.allclose(cuda, sequential_scan(*inputs), rtol=1e-4, atol=1e-4)
    weights = torch.randn_like(cuda)
    got = torch.autograd.grad((cuda * weights).sum(), inputs)
    want = torch.autograd.grad((chunked * weights).sum(), inputs)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("recipe", ["recipes/mamba.toml", "recipes/mamba_high_order.toml"])
def test_stepping_one_character_at_a_time_gives_the_forward_logits(recipe: str) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe(recipe, TINY)).double()
    codes = torch.randint(0, 128, (3, 12))
    with torch.no_grad():
        parallel = model(codes)
        state = model.init_state(3)
        stepped = []
        for t in range(codes.shape[1]):
            logits, state = model.step(codes[:, t], state)
            stepped.append(logits)
    assert torch.allclose(torch.stack(stepped, dim=1), parallel, rtol=0, atol=1e-10)


@pytest.mark.parametrize("recipe", ["recipes/mamba.toml", "recipes/mamba_high_order.toml"])
def test_the_loss_at_step_zero_is_near_ln_128(recipe: str) -> None:
    torch.manual_seed(0)
    model = build_model(load_recipe(recipe))  # the recipe's full size: 5 blocks of d_model 64
    codes = torch.randint(32, 127, (8, 17))
    with torch.no_grad():
        logits = model(codes[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, 128), codes[:, 1:].reshape(-1)).item()
    assert abs(loss - math.log(128)) < 0.5


def test_predictions_are_causal_and_the_scans_agree_inside_the_model() -> None:
    torch.manual_seed(0)
    recipe = load_recipe("recipes/mamba.toml", TINY)
    model = build_model(recipe).double()
    codes = torch.randint(0, 128, (2, 12))
    changed = codes.clone()
    changed[:, 8] = (codes[:, 8] + 1) % 128
    with torch.no_grad():
        before, after = model(codes), model(changed)
        for mixer in model.mixers:
            mixer.scan = "sequential"
        sequential = model(codes)
    assert torch.equal(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8:], after[:, 8:])
    assert torch.allclose(sequential, before, rtol=0, atol=1e-10)


@pytest.mark.parametrize("recipe", ["recipes/mamba.toml", "recipes/mamba_high_order.toml"])
def test_the_recipe_trains_generates_and_evaluates_through_the_cli(recipe: str, round_trip) -> None:
    assert round_trip(recipe, TINY)["characters"] > 1000
