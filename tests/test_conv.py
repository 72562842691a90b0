"""Convolutional and tail-focus networks: seed shapes, the convolution against a loop, focus truncates."""

import pytest
import torch

from langinterp.errors import UsageError
from langinterp.layers import HighOrderLinear
from langinterp.models import build_model
from langinterp.models.conv import CharacterConv1d, ConvNet, PiecewiseConv1d
from langinterp.recipe import load_recipe

SMALL_CONV = ["model.channels=[1, 3, 4, 5]"]
SMALL_TAIL = ["model.channels=[1, 4, 3, 5]"]


def build(recipe: str, overrides: list[str]) -> ConvNet:
    torch.manual_seed(0)
    return build_model(load_recipe(recipe, overrides)).double().eval()


def test_seed_shapes_with_small_channel_counts() -> None:
    conv = build("recipes/conv.toml", SMALL_CONV)
    tail = build("recipes/tail_focus.toml", SMALL_TAIL)
    assert conv.lengths == [1000, 100, 10] and conv.receptive_field() == 10_000
    # 256 characters -> 31 -> 30 positions; the last layer reads the last 16 of those 30 -> 1 output.
    assert tail.lengths == [31, 30, 1] and tail.receptive_field() == 144
    with torch.no_grad():
        assert conv(torch.randint(0, 128, (2, 10_000))).shape == (2, 128)
        assert tail(torch.randint(0, 128, (2, 256))).shape == (2, 128)


@pytest.mark.parametrize(("length", "kernel", "stride"), [(12, 3, 3), (13, 4, 2), (9, 2, 1)])
def test_piecewise_convolution_equals_the_layer_applied_at_every_position(
    length: int, kernel: int, stride: int
) -> None:
    torch.manual_seed(0)
    conv = PiecewiseConv1d(3, 5, kernel, stride, n=3, segments=4, kind="continuous", init="uniform").double()
    x = torch.rand(2, length, 3, dtype=torch.float64) * 2 - 1
    linear: HighOrderLinear = conv.linear
    expected = torch.stack(
        [
            linear(x[:, p : p + kernel].transpose(1, 2).flatten(1))
            for p in range(0, length - kernel + 1, stride)
        ],
        dim=1,
    )
    assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)


def test_character_convolution_equals_the_input_layer_at_every_position() -> None:
    torch.manual_seed(0)
    conv = CharacterConv1d(
        4, kernel=5, stride=5, n=2, segments=128, kind="continuous", init="uniform"
    ).double()
    codes = torch.randint(0, 128, (3, 20))
    reference = conv.input.as_linear()
    reference.path = "gather"  # the plain PyTorch path of the layer over codes_to_unit(codes)
    expected = torch.stack([reference(codes_unit(codes[:, p : p + 5])) for p in range(0, 16, 5)], 1)
    assert torch.allclose(conv(codes), expected, rtol=0, atol=1e-12)


def codes_unit(codes: torch.Tensor) -> torch.Tensor:
    return (codes.double() + 0.5) / 64 - 1


def test_characters_outside_the_focused_tail_do_not_change_the_prediction() -> None:
    model = build("recipes/tail_focus.toml", SMALL_TAIL)
    codes = torch.randint(0, 128, (2, 256))
    outside, inside = codes.clone(), codes.clone()
    outside[:, : 256 - 144] = torch.randint(0, 128, (2, 256 - 144))
    inside[:, 256 - 144] = (codes[:, 256 - 144] + 1) % 128
    with torch.no_grad():
        reference = model(codes)
        assert torch.equal(model(outside), reference)
        assert not torch.allclose(model(inside), reference)


def test_focus_zero_reads_every_position() -> None:
    model = build("recipes/tail_focus.toml", [*SMALL_TAIL, "model.focus=[0, 0, 0]", "data.context=144"])
    codes = torch.randint(0, 128, (1, 144))
    changed = codes.clone()
    changed[0, 0] = (codes[0, 0] + 1) % 128
    assert model.receptive_field() == 144
    with torch.no_grad():
        assert not torch.allclose(model(changed), model(codes))


def test_the_last_characters_always_count_when_patches_do_not_tile_the_window() -> None:
    model = build(
        "recipes/conv.toml",
        [
            "data.context=25",
            "model.kernel=[4]",
            "model.stride=[4]",
            "model.channels=[1, 3]",
            "model.segments=[128]",
        ],
    )
    codes = torch.randint(0, 128, (1, 25))
    first, last = codes.clone(), codes.clone()
    first[0, 0] = (codes[0, 0] + 1) % 128
    last[0, -1] = (codes[0, -1] + 1) % 128
    with torch.no_grad():
        assert torch.equal(model(first), model(codes))
        assert not torch.allclose(model(last), model(codes))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.focus=[0, 0, 40]"], "reads only 30 positions"),
        (["model.stride=[8, 1]"], "one entry per layer"),
        (["model.channels=[2, 4, 3, 5]"], "must be 1"),
        (["data.context=8"], "fewer than its kernel"),
    ],
)
def test_shapes_that_do_not_fit_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_model(load_recipe("recipes/tail_focus.toml", [*SMALL_TAIL, *overrides]))


CONV_TINY = ["data.context=100", "model.kernel=[10, 10]", "model.stride=[10, 10]", "model.channels=[1, 3, 4]"]
TAIL_TINY = ["data.context=40", "model.kernel=[4, 2, 4]", "model.stride=[2, 1, 2]", "model.focus=[0, 0, 8]"]


@pytest.mark.parametrize(
    ("recipe", "overrides"),
    [
        ("recipes/conv.toml", [*CONV_TINY, "model.segments=[128, 2]"]),
        ("recipes/tail_focus.toml", [*TAIL_TINY, "model.channels=[1, 3, 3, 4]"]),
    ],
)
def test_the_recipe_trains_generates_and_evaluates_through_the_cli(
    recipe: str, overrides: list[str], round_trip
) -> None:
    assert round_trip(recipe, overrides)["characters"] > 900
