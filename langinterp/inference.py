"""A trained model ready to generate or be scored: from a run (newest, by name or path) or a checkpoint file.

Neural runs keep Lightning checkpoints; a checkpoint carries its resolved recipe, so a `.ckpt` file loads on
its own, without its run directory. LightGBM runs keep a booster instead, loaded by the gbm family.
Everything is read safely (`weights_only=True`), and every way of pointing at the wrong thing is one
clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from langinterp.errors import NotFoundError, UsageError, first_line
from langinterp.models import build_model
from langinterp.models.base import CharModel
from langinterp.recipe import Recipe
from langinterp.runs import CHECKPOINTS, RunDir, find_run, load_checkpoint


@dataclass
class Loaded:
    """A model in eval mode, the recipe it was trained with, and where it came from (for messages)."""

    model: CharModel
    recipe: Recipe
    source: str

    @property
    def data_kind(self) -> str:
        """`sequence` or `centered`: what the model predicts, which decides whether it can generate."""
        return self.recipe.data["kind"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _run_checkpoint(run: RunDir, which: str | None) -> Path:
    """The run's `best` or `last` checkpoint; without a choice, best, else last (a run still in epoch 1)."""
    for name in (which,) if which else CHECKPOINTS:
        path = run.checkpoint(name)
        if path.is_file():
            return path
    if which:
        raise NotFoundError(f"run {run.name!r} has no {which} checkpoint ({path})")
    info = run.info()
    if info.status == "failed":
        error = info.extra.get("error")
        reason = f": {error}" if isinstance(error, str) else ""
        raise NotFoundError(f"run {run.name!r} failed before it saved a checkpoint{reason}")
    raise NotFoundError(f"run {run.name!r} has no checkpoint yet (it saves one at the end of each epoch)")


def _model_from_checkpoint(path: Path) -> tuple[CharModel, Recipe, str]:
    """Model, recipe, and `epoch E, step S` as Lightning counts them (the epoch from 0)."""
    loaded = load_checkpoint(path)
    try:
        model = build_model(loaded.recipe)
    except ValueError as error:
        raise UsageError(f"{path}: {error}") from None
    try:
        model.load_state_dict(loaded.state_dict)
    except RuntimeError as error:
        raise UsageError(f"{path} does not fit the model its recipe describes: {first_line(error)}") from None
    return model, loaded.recipe, f"epoch {loaded.epoch}, step {loaded.global_step}"


def load_for_inference(
    run: str | None = None,
    checkpoint: str | None = None,
    *,
    data_kind: str | None = None,
    device: torch.device | str | None = None,
) -> Loaded:
    """Load a model to generate with or score.

    `checkpoint` is `best` or `last` of the run (default: best, falling back to last), or the path of a
    `.ckpt` file, which needs no run. `run` is a run name or directory; without one, the newest run (of
    `data_kind`, when given: generation asks for `sequence` so that a newer centered run is passed over).
    """
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        path = Path(checkpoint).expanduser()
        model, recipe, when = _model_from_checkpoint(path)
        source = f"{path} ({when})"
    else:
        found = find_run(run, data_kind=data_kind)
        if found.info().model_type == "gbm":
            if checkpoint is not None:
                raise UsageError(f"run {found.name!r} is a LightGBM run: it has a booster, no checkpoints")
            from langinterp.models.gbm import load_gbm_model

            model, recipe, source = load_gbm_model(found), found.recipe(), f"run {found.name}"
        else:
            path = _run_checkpoint(found, checkpoint)
            model, recipe, when = _model_from_checkpoint(path)
            source = f"run {found.name}, {path.stem} checkpoint ({when})"
    if device is None:
        # A booster predicts on the CPU whatever device its inputs are on; only neural models gain from CUDA.
        device = "cpu" if recipe.model["type"] == "gbm" else default_device()
    model.to(device)
    model.eval()
    return Loaded(model, recipe, source)
