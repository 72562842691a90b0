"""Model families by type name: `model.type` in a recipe picks the builder registered under it."""

from __future__ import annotations

from collections.abc import Callable

from langinterp.models.base import CharModel
from langinterp.recipe import Recipe

Builder = Callable[[Recipe], CharModel]

_BUILDERS: dict[str, Builder] = {}


def register(model_type: str) -> Callable[[Builder], Builder]:
    """Decorator: make `builder` the constructor for recipes whose `model.type` is `model_type`."""

    def decorate(builder: Builder) -> Builder:
        if model_type in _BUILDERS:
            raise ValueError(f"model type {model_type!r} is registered twice")
        _BUILDERS[model_type] = builder
        return builder

    return decorate


def build_model(recipe: Recipe) -> CharModel:
    """A freshly initialised model for the recipe (seed the RNG first for repeatable weights)."""
    model_type = recipe.model["type"]
    try:
        builder = _BUILDERS[model_type]
    except KeyError:
        raise ValueError(f"no builder is registered for model type {model_type!r}") from None
    return builder(recipe)


def registered_types() -> tuple[str, ...]:
    return tuple(_BUILDERS)
