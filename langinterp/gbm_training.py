"""Training LightGBM next-character models (`model.type = "gbm"`) into a run directory.

Each training example is a window of the previous `data.context` character codes (categorical features:
a code is a name, not a quantity) and the character that follows. Windows never cross from one book into
the next. The classes are the characters that occur as targets in the training windows; held-out windows
whose target is not among them cannot be given to LightGBM (its labels must be classes), so early
stopping watches the others, and the final held-out bits per character (`held_out_bits`) charges them the
documented floor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import torch

from langinterp.data import build_splits
from langinterp.errors import UsageError
from langinterp.models.gbm import class_indices, held_out_bits, write_class_map
from langinterp.paths import atomic_write
from langinterp.recipe import Recipe
from langinterp.runs import RunDir, create_run

# progress(round, total rounds, {"valid_bpc": ...}) after each boosting round ({} without held-out text).
Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class Windows:
    """Character windows `x[N, context]` (uint8 codes) and the character after each, `y[N]`."""

    x: np.ndarray
    y: np.ndarray


def make_windows(texts: Sequence[torch.Tensor], context: int) -> Windows:
    """Every window of `context` codes followed by one more, within each text (never across texts)."""
    xs, ys = [], []
    for text in texts:
        codes = text.cpu().numpy().astype(np.uint8, copy=False)
        if len(codes) <= context:
            continue
        view = np.lib.stride_tricks.sliding_window_view(codes, context + 1)
        xs.append(view[:, :context])
        ys.append(view[:, context])
    if not xs:
        return Windows(np.zeros((0, context), np.uint8), np.zeros(0, np.uint8))
    return Windows(np.concatenate(xs), np.concatenate(ys))


def booster_params(recipe: Recipe, num_class: int) -> dict[str, Any]:
    """LightGBM parameters for the recipe: multiclass over `num_class` characters, repeatable for a seed."""
    model = recipe.model
    params: dict[str, Any] = {
        "objective": "multiclass",
        "num_class": num_class,
        "metric": "multi_logloss",
        "num_leaves": model["num_leaves"],
        "max_depth": model["max_depth"],
        "learning_rate": model["learning_rate"],
        "min_data_in_leaf": model["min_data_in_leaf"],
        "seed": recipe.trainer["seed"],
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    if model["threads"] > 0:
        params["num_threads"] = model["threads"]
    return params


def _subsample(windows: Windows, limit: int, seed: int) -> Windows:
    if limit == 0 or len(windows.y) <= limit:
        return windows
    chosen = np.sort(np.random.default_rng(seed).choice(len(windows.y), size=limit, replace=False))
    return Windows(windows.x[chosen], windows.y[chosen])


def _round_callback(progress: Progress) -> Callable[[Any], None]:
    def report(env: Any) -> None:
        losses = [result for _, name, result, *_ in env.evaluation_result_list if name == "multi_logloss"]
        metrics = {"valid_bpc": losses[0] / math.log(2)} if losses else {}
        progress(env.iteration - env.begin_iteration + 1, env.end_iteration - env.begin_iteration, metrics)

    report.order = 20  # before LightGBM's early stopping (30), which ends training by raising
    return report


def _leaves(model_text: str) -> int:
    """Leaf values in the whole model (from its text form): the gbm counterpart of a parameter count."""
    return sum(int(n) for n in re.findall(r"^num_leaves=(\d+)$", model_text, re.MULTILINE))


def check_gbm_recipe(recipe: Recipe) -> None:
    """Refuse, in one line, a recipe this trainer cannot train (before any work or progress bar starts)."""
    if recipe.model["type"] != "gbm":
        raise UsageError(
            f"recipe {recipe.name!r} has model.type {recipe.model['type']!r}; `langinterp gbm` trains "
            'model.type = "gbm" recipes (`langinterp train` trains the others)'
        )
    if recipe.data["kind"] != "sequence":
        raise UsageError("gbm models predict the next character: data.kind must be sequence")


def train_gbm(
    recipe: Recipe,
    *,
    run_name: str | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
) -> RunDir:
    """Train a booster for a gbm recipe, save it in a new run directory and return that run.

    run.json records the held-out bits per character (`best_valid_bpc`, None without held-out text), the
    rounds kept and the leaf count; the class map goes to `gbm.json` beside `model.txt`.
    """
    check_gbm_recipe(recipe)
    model, context, seed = recipe.model, recipe.data["context"], recipe.trainer["seed"]
    splits = build_splits(recipe.data, mirror=mirror)
    train = _subsample(make_windows(splits.train, context), model["max_train_windows"], seed)
    if len(train.y) == 0:
        raise UsageError(f"the training text is too short for data.context = {context}")
    classes = np.unique(train.y)
    if len(classes) < 2:
        raise UsageError("the training text has fewer than two distinct characters to tell apart")
    valid = make_windows(splits.valid, context)
    params = booster_params(recipe, len(classes))
    train_set = lgb.Dataset(
        train.x,
        label=class_indices(train.y, classes),
        categorical_feature=list(range(context)),
        params=params,
    )
    known = class_indices(valid.y, classes) >= 0
    valid_sets, callbacks = [], []
    if known.any():
        valid_sets.append(
            train_set.create_valid(valid.x[known], label=class_indices(valid.y[known], classes))
        )
        if model["early_stopping"] > 0:
            callbacks.append(
                lgb.early_stopping(model["early_stopping"], first_metric_only=True, verbose=False)
            )
    if progress is not None:
        callbacks.append(_round_callback(progress))

    run = create_run(recipe, run_name)
    try:
        booster = lgb.train(
            params, train_set, num_boost_round=model["rounds"], valid_sets=valid_sets, callbacks=callbacks
        )
    except BaseException:
        run.update_info(status="failed")
        raise
    # With early stopping, saving, predicting and counting all stop at the best round (LightGBM's default).
    write_class_map(run, classes.tolist(), context)
    model_text = booster.model_to_string()  # what `save_model` writes, serialised once for both uses
    atomic_write(run.booster_path, model_text)
    bpc = (
        held_out_bits(booster, classes.tolist(), valid.x, valid.y, model["threads"]) if len(valid.y) else None
    )
    run.update_info(
        status="finished",
        best_valid_bpc=bpc,
        epochs=booster.best_iteration or booster.current_iteration(),
        parameters=_leaves(model_text),
        extra={
            "classes": len(classes),
            "train_windows": len(train.y),
            "valid_windows": len(valid.y),
            "valid_unseen": int((~known).sum()),
        },
    )
    return run
