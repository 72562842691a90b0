"""Transformer: attention runs across positions causally, order matters, the batch place does not."""

import pytest
import torch

from langinterp.errors import UsageError
from langinterp.models import build_model
from langinterp.models.transformer import Transformer
from langinterp.recipe import load_recipe

RECIPES = ["recipes/transformer.toml", "recipes/high_order_input_transformer.toml"]
TINY = ["model.d_model=8", "model.heads=2", "model.layers=2", "model.feedforward=12", "data.context=10"]


def tiny(recipe: str, *extra: str) -> Transformer:
    torch.manual_seed(0)
    return build_model(load_recipe(recipe, [*TINY, *extra])).double().eval()


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_changing_a_later_character_leaves_earlier_predictions_unchanged(recipe: str, positions: str) -> None:
    model = tiny(recipe, f"model.positions={positions!r}")
    codes = torch.randint(0, 128, (3, 10))
    changed = codes.clone()
    changed[:, 6] = (codes[:, 6] + 17) % 128
    with torch.no_grad():
        before, after = model(codes), model(changed)
    assert before.shape == (3, 10, 128)
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_prediction_depends_on_the_order_of_the_characters(recipe: str) -> None:
    model = tiny(recipe)
    codes = torch.tensor([[ord(c) for c in "the horror"]])
    swapped = torch.tensor([[ord(c) for c in "eht horror"]])
    with torch.no_grad():
        assert not torch.allclose(model(codes)[:, -1], model(swapped)[:, -1], atol=1e-6)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_sample_is_predicted_the_same_wherever_it_sits_in_the_batch(recipe: str) -> None:
    model = tiny(recipe)
    codes = torch.randint(0, 128, (5, 10))
    with torch.no_grad():
        batch = model(codes)
        for place in range(5):
            alone = model(codes[place : place + 1])
            assert torch.allclose(batch[place : place + 1], alone, rtol=0, atol=1e-12)
        reordered = model(codes.flip(0))
    assert torch.allclose(reordered.flip(0), batch, rtol=0, atol=1e-12)


def test_a_shorter_sequence_gives_the_same_predictions_as_the_start_of_a_longer_one() -> None:
    """Generation recomputes over a growing prompt: positions are indexed from the start of the text."""
    model = tiny(RECIPES[0])
    codes = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(codes[:, :4]), model(codes)[:, :4], rtol=0, atol=1e-12)


def test_the_layers_are_piecewise_or_linear_as_the_recipe_says() -> None:
    from langinterp.layers import HighOrderLinear

    high = tiny(RECIPES[0])
    linear = tiny(RECIPES[1])
    assert isinstance(high.blocks[0].attention.qkv, HighOrderLinear)
    assert isinstance(high.blocks[0].feedforward.layers[2], HighOrderLinear)
    assert isinstance(linear.blocks[0].attention.qkv, torch.nn.Linear)
    assert high.input.segments == linear.input.segments == 128


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(UsageError, match="multiple of model.heads"):
        build_model(load_recipe(RECIPES[0], [*TINY, "model.heads=3"]))


@pytest.mark.parametrize(("recipe", "overrides"), [(RECIPES[0], TINY), (RECIPES[1], TINY)])
def test_the_recipe_trains_generates_and_evaluates_through_the_cli(
    recipe: str, overrides: list[str], round_trip
) -> None:
    assert round_trip(recipe, overrides)["characters"] > 900
