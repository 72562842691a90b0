"""Model families. Importing this package registers every family under its `model.type` name."""

from langinterp.models.base import CharModel
from langinterp.models.registry import build_model, register, registered_types

__all__ = ["CharModel", "build_model", "register", "registered_types"]
from langinterp.models import (
    conv,  # noqa: F401
    gpt,  # noqa: F401
    mamba,  # noqa: F401
    mlp,  # noqa: F401
    transformer,  # noqa: F401
)
