"""The MLP family (`model.type = "mlp"`): an input layer over the character window, hidden layers, and an
output layer to the 128 logits, each set up by its own table (`input`, `hidden`, `output`).

Each table's `layer`, `n` and `segments` reach exactly the layers it names (the earlier research code
applied `n` to the output layer only). A piecewise input layer is a `CharacterInput`, which runs at table
lookup cost; a "linear" input layer is `nn.Linear` over the codes mapped into [-1, 1]. Piecewise layers but
the last are followed by the recipe's normalisation; "linear" layers but the last by ReLU (a piecewise
link is already non-linear, a linear one needs an activation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from langinterp.data import model_input_length
from langinterp.errors import UsageError
from langinterp.layers import CharacterInput, HighOrderLinear, codes_to_unit, normalization
from langinterp.layers.basis import check_kind
from langinterp.models.base import CharModel
from langinterp.models.registry import register
from langinterp.recipe import Recipe
from langinterp.text import VOCAB_SIZE


class UnitCodes(nn.Module):
    """Character codes (int) -> floats in [-1, 1], so a plain `nn.Linear` can read them."""

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return codes_to_unit(codes)


def _piecewise(layer: dict[str, Any]) -> bool:
    return layer["layer"] != "linear"


def _block(
    layer: nn.Module, options: dict[str, Any], width: int, model: dict[str, Any], last: bool
) -> list[nn.Module]:
    """A layer and what follows it: normalisation after a piecewise layer, ReLU after a linear one."""
    if last:
        return [layer]
    if _piecewise(options):
        return [layer, normalization(model["normalization"], width)]
    return [layer, nn.ReLU()]


def _piecewise_options(options: dict[str, Any], initialization: str) -> dict[str, Any]:
    """A recipe layer table as the keyword arguments of a piecewise layer."""
    return {
        "n": options["n"],
        "segments": options["segments"],
        "kind": options["layer"],
        "initialization": initialization,
    }


def _dense(options: dict[str, Any], in_features: int, out_features: int, initialization: str) -> nn.Module:
    if not _piecewise(options):
        return nn.Linear(in_features, out_features)
    return HighOrderLinear(in_features, out_features, **_piecewise_options(options, initialization))


class MLP(CharModel):
    """Window reader: `codes[B, L] -> logits[B, 128]`, L the model input length of the recipe's data."""

    reads = "window"

    def __init__(self, model: dict[str, Any], length: int) -> None:
        super().__init__(length)
        initialization = model["initialization"]
        source, hidden, target = model["input"], model["hidden"], model["output"]
        width = hidden["width"]
        if _piecewise(source):
            first: nn.Module = CharacterInput(length, width, **_piecewise_options(source, initialization))
        else:
            first = nn.Sequential(UnitCodes(), nn.Linear(length, width))
        blocks = _block(first, source, width, model, last=False)
        for _ in range(hidden["layers"]):
            blocks += _block(_dense(hidden, width, width, initialization), hidden, width, model, last=False)
        blocks += _block(
            _dense(target, width, VOCAB_SIZE, initialization), target, VOCAB_SIZE, model, last=True
        )
        self.layers = nn.Sequential(*blocks)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.layers(codes)


def check_tables(model: dict[str, Any]) -> None:
    """A UsageError naming the table whose (layer, n, segments) describe no layer."""
    for table in ("input", "hidden", "output"):
        options = model[table]
        if _piecewise(options):
            try:
                check_kind(options["layer"], options["n"], options["segments"])
            except ValueError as error:
                raise UsageError(f"model.{table}: {error}") from None


@register("mlp")
def build_mlp(recipe: Recipe) -> MLP:
    check_tables(recipe.model)
    return MLP(recipe.model, model_input_length(recipe.data["kind"], recipe.data["context"]))
