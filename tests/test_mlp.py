"""The MLP family: each table's layer, n and segments reach exactly the layers it names."""

import pytest
import torch
from torch import nn

from langinterp.errors import UsageError
from langinterp.layers import CharacterInput, HighOrderLinear
from langinterp.models import build_model
from langinterp.models.mlp import MLP, UnitCodes
from langinterp.recipe import resolve


def _recipe(*overrides: str):
    return resolve({"data": {"books": ["x.txt"]}}, overrides, name="test")


def test_each_table_reaches_its_own_layers() -> None:
    recipe = _recipe(
        'model.input={layer="discontinuous", n=3, segments=64}',
        'model.hidden={layer="continuous", n=4, segments=5, layers=2, width=12}',
        'model.output={layer="polynomial", n=5, segments=1}',
        'model.normalization="max_abs"',
        "data.context=6",
    )
    layers = list(build_model(recipe).layers)
    piecewise = [(type(m).__name__, m.kind, m.n, m.segments) for m in layers if hasattr(m, "kind")]
    assert piecewise == [
        ("CharacterInput", "discontinuous", 3, 64),
        ("HighOrderLinear", "continuous", 4, 5),
        ("HighOrderLinear", "continuous", 4, 5),
        ("HighOrderLinear", "polynomial", 5, 1),
    ]
    first = layers[0]
    assert isinstance(first, CharacterInput) and (first.length, first.out_features) == (6, 12)
    assert [type(m).__name__ for m in layers[1::2]] == ["MaxAbs", "MaxAbs", "MaxAbs"]
    assert (layers[-1].in_features, layers[-1].out_features) == (12, 128)


def test_linear_layers_get_relu_and_the_output_no_activation() -> None:
    recipe = _recipe(
        'model.input={layer="linear"}',
        'model.hidden={layer="linear", layers=1, width=10}',
        'model.output={layer="linear"}',
    )
    layers = list(build_model(recipe).layers)
    assert isinstance(layers[0], nn.Sequential) and isinstance(layers[0][0], UnitCodes)
    assert [type(m) for m in layers[1:]] == [nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert (layers[0][1].in_features, layers[-1].out_features) == (16, 128)


def test_piecewise_input_with_linear_hidden_layers() -> None:
    recipe = _recipe(
        'model.normalization="none"',
        'model.hidden={layer="linear", layers=1, width=10}',
        'model.output={layer="continuous", n=3, segments=2}',
    )
    layers = list(build_model(recipe).layers)
    assert [type(m) for m in layers] == [CharacterInput, nn.Identity, nn.Linear, nn.ReLU, HighOrderLinear]
    assert (layers[-1].n, layers[-1].segments) == (3, 2)


@pytest.mark.parametrize(("kind", "context", "length"), [("sequence", 8, 8), ("centered", 9, 8)])
def test_forward_reads_the_window(kind: str, context: int, length: int) -> None:
    model = build_model(_recipe(f'data.kind="{kind}"', f"data.context={context}", "model.hidden.width=16"))
    assert isinstance(model, MLP) and model.reads == "window" and model.context == length
    logits = model(torch.randint(0, 128, (5, length)))
    assert logits.shape == (5, 128) and torch.isfinite(logits).all()


def test_impossible_layer_is_one_usage_error() -> None:
    with pytest.raises(UsageError, match=r"model.hidden: .*continuous layer needs n >= 2"):
        build_model(_recipe("model.hidden.n=1"))
