"""Model families. Importing this package registers every family under its `model.type` name."""

from langinterp.models.base import CharModel
from langinterp.models.registry import build_model, register, registered_types

__all__ = ["CharModel", "build_model", "register", "registered_types"]
from langinterp.models import mlp  # noqa: E402,F401
from langinterp.models import mamba  # noqa: E402,F401
from langinterp.models import transformer  # noqa: E402,F401
from langinterp.models import conv  # noqa: E402,F401
