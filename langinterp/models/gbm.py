"""LightGBM next-character models, wrapped in the window-model contract.

A booster is a multiclass classifier over the characters that occurred as targets in its training text
(its *classes*, sorted codes mapped to 0..C-1), reading the previous `context` character codes as
categorical features. `GbmModel` puts it behind `CharModel`: `forward(codes[B, context])` returns the log
of the booster's probabilities, scattered into the 128-code vocabulary. The probabilities are used as
they come (the earlier research code applied a softmax to them a second time, flattening every
distribution). A character the booster never saw gets log-probability `-inf`, so sampling can never emit
it; scoring held-out text charges such a character (and any probability below it) `UNSEEN_FLOOR`, so
bits per character stay finite.

A gbm run directory holds `model.txt` (LightGBM's own text format) and `gbm.json` (the class map and the
context), both written atomically; they are checked against each other when loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import torch

from langinterp.errors import NotFoundError, UsageError, first_line
from langinterp.models.base import CharModel
from langinterp.paths import atomic_write
from langinterp.runs import RunDir
from langinterp.text import VOCAB_SIZE

GBM_FORMAT = "langinterp-gbm/1"
CLASS_MAP_FILE = "gbm.json"
# Probability charged to a held-out character the booster gives less (or never saw): 2^-20, 20 bits.
UNSEEN_FLOOR = 2.0**-20
# Windows per `Booster.predict` call, so scoring a long text never builds one huge probability matrix.
PREDICT_CHUNK = 65_536
# Below this many windows one thread predicts: starting LightGBM's thread pool costs far more than a
# few rows (about 16 ms against 0.07 ms for one window on a busy machine), and generation predicts one.
SINGLE_THREAD_BELOW = 256


def class_map_path(run: RunDir) -> Path:
    return run.path / CLASS_MAP_FILE


def write_class_map(run: RunDir, classes: list[int], context: int) -> None:
    """Store what the booster file cannot: which character code each class index stands for."""
    payload = {"format": GBM_FORMAT, "context": context, "classes": classes}
    atomic_write(class_map_path(run), json.dumps(payload) + "\n")


def class_indices(targets: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class index of each target code (any uint8 value), -1 for a code that is not a class."""
    index = np.full(256, -1, dtype=np.int64)
    index[classes] = np.arange(len(classes))
    return index[targets.astype(np.int64)]


def predict_probabilities(booster: lgb.Booster, windows: np.ndarray, threads: int = 0) -> np.ndarray:
    """Class probabilities `[N, C]` for windows `[N, context]` of character codes, in chunks.

    `threads` 0 leaves the choice to LightGBM, except for small batches (see `SINGLE_THREAD_BELOW`).
    """
    if threads == 0 and len(windows) < SINGLE_THREAD_BELOW:
        threads = 1
    extra: dict[str, Any] = {"num_threads": threads} if threads > 0 else {}
    parts = [
        np.asarray(booster.predict(windows[start : start + PREDICT_CHUNK].astype(np.float64), **extra))
        for start in range(0, len(windows), PREDICT_CHUNK)
    ]
    if not parts:
        return np.zeros((0, booster.num_model_per_iteration()))
    return np.concatenate(parts).reshape(len(windows), -1)


def held_out_bits(
    booster: lgb.Booster, classes: list[int], windows: np.ndarray, targets: np.ndarray, threads: int = 0
) -> float:
    """Mean bits per character of `targets` given `windows`: -log2 p, p floored at `UNSEEN_FLOOR`.

    This is LightGBM's multi_logloss divided by ln 2, extended to characters that are not classes.
    """
    if len(targets) == 0:
        raise UsageError("no held-out windows to score (the held-out text is shorter than data.context + 1)")
    probabilities = predict_probabilities(booster, windows, threads)
    columns = class_indices(targets, np.asarray(classes))
    chosen = np.where(columns >= 0, probabilities[np.arange(len(targets)), np.maximum(columns, 0)], 0.0)
    return float(-np.log2(np.maximum(chosen, UNSEEN_FLOOR)).mean())


class GbmModel(CharModel):
    """A LightGBM booster behind the window-model contract: codes `[B, context]` -> log-probs `[B, 128]`."""

    reads = "window"

    def __init__(self, booster: lgb.Booster, classes: list[int], context: int, threads: int = 0) -> None:
        super().__init__(context)
        self.booster = booster
        self.threads = threads
        # A buffer, so the class map follows `.to(device)` and callers can find the model's device.
        self.register_buffer("classes", torch.tensor(classes, dtype=torch.int64))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2 or codes.shape[1] != self.context:
            raise ValueError(f"expected codes of shape [B, {self.context}], got {tuple(codes.shape)}")
        probabilities = predict_probabilities(self.booster, codes.detach().cpu().numpy(), self.threads)
        with np.errstate(divide="ignore"):
            log_probabilities = torch.from_numpy(np.log(probabilities)).to(torch.float32)
        logits = torch.full((codes.shape[0], VOCAB_SIZE), -math.inf, dtype=torch.float32)
        logits[:, self.classes.cpu()] = log_probabilities
        return logits.to(codes.device)


def load_gbm_model(run: RunDir) -> GbmModel:
    """The model of a gbm run: `model.txt` and its class map, checked against each other."""
    if not run.booster_path.is_file():
        raise NotFoundError(f"run {run.name!r} has no {run.booster_path.name} (did its training finish?)")
    try:
        meta = json.loads(class_map_path(run).read_text(encoding="utf-8"))
        classes = [int(code) for code in meta["classes"]]
        context = int(meta["context"])
        if meta.get("format") != GBM_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {GBM_FORMAT!r}")
    except FileNotFoundError:
        raise NotFoundError(f"run {run.name!r} has no {CLASS_MAP_FILE} (did its training finish?)") from None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UsageError(f"{class_map_path(run)} is not a readable class map: {error}") from None
    if (
        not classes
        or any(not 0 <= code < VOCAB_SIZE for code in classes)
        or len(set(classes)) != len(classes)
    ):
        raise UsageError(f"{class_map_path(run)} lists invalid character codes")
    try:
        booster = lgb.Booster(model_file=str(run.booster_path))
    except lgb.basic.LightGBMError as error:
        raise UsageError(
            f"{run.booster_path} is not a readable LightGBM model: {first_line(error)}"
        ) from None
    found = (booster.num_model_per_iteration(), booster.num_feature())
    if found != (len(classes), context):
        raise UsageError(
            f"{run.booster_path} ({found[0]} classes, {found[1]} features) does not match "
            f"{CLASS_MAP_FILE} ({len(classes)} classes, context {context})"
        )
    return GbmModel(booster, classes, context)
