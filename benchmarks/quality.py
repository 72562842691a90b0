"""Held-out bits per character of every model family at equal training time, against a reference GPT.

    python benchmarks/quality.py [--budget-s S] [--books IDS] [--recipes NAMES] [--set KEY=VALUE ...]
                                 [--out FILE] [--mirror URL]

Each recipe (the default recipe of a family, `recipes/<name>.toml`, or any recipe file) is trained on the
same books with the same held-out split (the last `--holdout` of each book) for the same number of seconds
of training on this machine, then scored on the whole held-out split with `evaluation.evaluate_model`.
The comparison is "what does a researcher get from this family in S seconds of CPU", not "which
architecture wins at convergence".

What "equal budget" means, and what is changed from each recipe to get it (the JSON records the list):
- neural families: `TimeBudget` adds up the wall-clock time of each training batch (forward, backward,
  optimizer step; not data loading, validation or checkpointing) and stops training after the batch that
  reaches the budget. The first batch is an untimed warm-up (one-time kernel builds), so every family
  trains one batch more than its timed steps. `trainer.max_epochs` is raised so that the budget, not the
  epoch count, ends the run.
- a cosine schedule anneals over `trainer.max_steps`, which a time budget cannot know in advance; under the
  budget it anneals over the budget's seconds instead (`time_cosine`), so it still reaches `min_lr` at the
  end. Plateau schedules are left as they are (they act once per epoch, on the validation loss).
- per-epoch validation (which plateau schedules and the best checkpoint read) is capped at the first
  `VALID_CHARS` predicted characters, because a sequence model's validation windows overlap and a full
  pass can cost more than the training. The reported numbers never come from it.
- no sample generations during training, CPU, one device.
- LightGBM: boosting rounds are unbounded and training stops after the round that reaches the budget
  (counted from the call, so building LightGBM's dataset counts as training). Its "parameters" are the
  leaves of all its trees, and its characters per second count each training window once per round.

Scores come from the last weights (never the best checkpoint, which was chosen on held-out text), over
every held-out character each model can predict: window models score every character after their first
`context` characters of each held-out tail, sequence models every position of non-overlapping
`context`-long windows (so they are also charged for the first characters of each window, read with
little context). `scored` says how many characters that was.

Prints a table; writes JSON {"budget_s", "books", "machine", "overrides", "rows": [...]} to --out
(default benchmarks/results/quality.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import pytorch_lightning as pl
import torch
from rich.console import Console
from rich.table import Table

from langinterp.data import build_splits
from langinterp.evaluation import evaluate_model
from langinterp.gbm_training import train_gbm
from langinterp.heap import keep_freed_memory
from langinterp.inference import load_for_inference
from langinterp.recipe import Recipe, load_recipe
from langinterp.runs import RunDir, timestamped_name
from langinterp.training import train

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPES = (
    "sparse_mlp",
    "sparse_mlp_n3",
    "piecewise_constant",
    "high_order_input",
    "transformer",
    "conv",
    "tail_focus",
    "mamba",
    "mamba_high_order",
    "gbm",
    "gpt",
    "best",
)
VALID_CHARS = 65_536
EVAL_BATCH = 256
MANY_EPOCHS = 1_000_000
MANY_ROUNDS = 100_000


def time_cosine(fraction: float, min_ratio: float) -> float:
    """Learning-rate multiplier of a cosine from 1 down to `min_ratio` as `fraction` goes from 0 to 1."""
    fraction = min(max(fraction, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * fraction))


class TimeBudget(pl.Callback):
    """Stops training once its batches have taken `seconds` in all; counts steps and predicted characters.

    Only the time inside training batches counts, so data loading, validation and checkpoint writing (which
    differ between families for reasons that have nothing to do with learning) do not eat the budget. The
    first batch is a warm-up outside the budget: it pays one-time costs (building the layers' CPU kernel
    when its cache is cold can take half a minute) that would otherwise land on whichever family runs first.
    """

    def __init__(self, seconds: float) -> None:
        self.budget = seconds
        self.seconds = 0.0
        self.characters = 0
        self.batches = 0
        self._started = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        recipe: Recipe = pl_module.recipe
        per_window = recipe.data["context"] if pl_module.model.reads == "sequence" else 1
        trainer.limit_val_batches = max(
            1, math.ceil(VALID_CHARS / (recipe.trainer["batch_size"] * per_window))
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap a cosine schedule over max_steps for the same cosine over the budget's seconds."""
        recipe: Recipe = pl_module.recipe
        if recipe.scheduler["name"] != "cosine":
            return
        (config,) = trainer.lr_scheduler_configs
        min_ratio = recipe.scheduler["min_lr"] / recipe.optimizer["lr"] if recipe.optimizer["lr"] else 0.0
        config.scheduler = torch.optim.lr_scheduler.LambdaLR(
            config.scheduler.optimizer, lambda _: time_cosine(self.seconds / self.budget, min_ratio)
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches += 1
        if self.batches == 1:
            return  # the warm-up batch: it trains, but is neither timed nor counted
        self.seconds += time.perf_counter() - self._started
        self.characters += batch[1].numel()
        if self.seconds >= self.budget:
            trainer.should_stop = True


def common_overrides(books: Sequence[int | str], holdout: float) -> list[str]:
    """What every recipe gets: the same books and the same held-out split."""
    return [
        f"data.books={json.dumps(list(books))}",
        f"data.holdout={holdout}",
        "data.valid_books=[]",
        "data.test_books=[]",
    ]


NEURAL_OVERRIDES = [
    f"trainer.max_epochs={MANY_EPOCHS}",
    "trainer.max_steps=-1",
    "trainer.samples=0",
    "trainer.accelerator='cpu'",
    "trainer.devices=1",
    "trainer.strategy='auto'",
    "trainer.num_nodes=1",
]
GBM_OVERRIDES = [f"model.rounds={MANY_ROUNDS}"]


def recipe_path(name: str) -> Path:
    """A recipe by name (`recipes/<name>.toml`) or by path."""
    path = Path(name)
    return path if path.suffix == ".toml" else ROOT / "recipes" / f"{name}.toml"


def _score(run: RunDir, recipe: Recipe, mirror: str | None) -> dict[str, Any]:
    loaded = load_for_inference(
        str(run.path), None if recipe.model["type"] == "gbm" else "last", device="cpu"
    )
    valid = build_splits(recipe.data, mirror=mirror).valid
    scores = evaluate_model(loaded.model, valid, "sequence", batch_size=EVAL_BATCH)
    return {"valid_bpc": scores.bits_per_char, "valid_acc": scores.accuracy, "scored": scores.characters}


def _train_neural(recipe: Recipe, budget: float, mirror: str | None) -> tuple[RunDir, dict[str, Any]]:
    meter = TimeBudget(budget)
    run = train(
        recipe,
        run_name=timestamped_name(f"quality-{recipe.name}"),
        mirror=mirror,
        quiet=True,
        extra_callbacks=[meter],
    )
    facts = {
        "parameters": run.info().parameters,
        "train_s": meter.seconds,
        "steps": meter.batches,
        "chars_per_s": meter.characters / meter.seconds if meter.seconds else 0.0,
    }
    return run, facts


def _train_gbm(recipe: Recipe, budget: float, mirror: str | None) -> tuple[RunDir, dict[str, Any]]:
    started = time.perf_counter()
    last = started

    def stop_at_budget(round_: int, total: int, metrics: dict[str, float]) -> None:
        nonlocal last
        last = time.perf_counter()
        if last - started >= budget:
            # LightGBM's own way for a callback to end training; the booster keeps `round_` rounds.
            raise lgb.callback.EarlyStopException(round_ - 1, [])

    run = train_gbm(
        recipe, run_name=timestamped_name(f"quality-{recipe.name}"), mirror=mirror, progress=stop_at_budget
    )
    info = run.info()
    seconds = last - started
    facts = {
        "parameters": info.parameters,
        "train_s": seconds,
        "steps": info.epochs,
        "chars_per_s": info.extra["train_windows"] * info.epochs / seconds if seconds else 0.0,
    }
    return run, facts


def measure(
    name: str,
    budget: float,
    books: Sequence[int | str],
    holdout: float,
    mirror: str | None,
    settings: Sequence[str] = (),
) -> dict[str, Any]:
    """Train one recipe for `budget` seconds and score it on the held-out split; one JSON row.

    `settings` are the user's `key=value` overrides (`--set`), applied last: the way to try a variation of
    a recipe at the same budget without writing a file.
    """
    base = load_recipe(recipe_path(name))
    is_gbm = base.model["type"] == "gbm"
    extra = GBM_OVERRIDES if is_gbm else NEURAL_OVERRIDES
    recipe = base.with_overrides([*common_overrides(books, holdout), *extra, *settings])
    load_before = os.getloadavg()[0]
    torch.manual_seed(recipe.trainer["seed"])
    run, facts = (_train_gbm if is_gbm else _train_neural)(recipe, budget, mirror)
    return {
        "recipe": base.name,
        "family": recipe.model["type"],
        "description": recipe.values["description"],
        "settings": list(settings),
        **_score(run, recipe, mirror),
        **facts,
        "context": recipe.data["context"],
        "batch_size": None if is_gbm else recipe.trainer["batch_size"],
        "run": run.name,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on: they are only comparable on the same machine and load."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightgbm": lgb.__version__,
        "python": platform.python_version(),
    }


def print_table(rows: list[dict[str, Any]], budget: float) -> None:
    table = Table(title=f"Held-out bits per character after {budget:g} s of training each")
    for column in ("recipe", "family", "valid bpc", "acc", "params", "chars/s", "train s", "steps", "scored"):
        table.add_column(column, justify="left" if column in ("recipe", "family") else "right")
    for row in sorted(rows, key=lambda r: r["valid_bpc"]):
        table.add_row(
            row["recipe"],
            row["family"],
            f"{row['valid_bpc']:.3f}",
            f"{row['valid_acc']:.3f}",
            f"{row['parameters']:,}",
            f"{row['chars_per_s']:,.0f}",
            f"{row['train_s']:.1f}",
            f"{row['steps']:,}",
            f"{row['scored']:,}",
        )
    Console(width=120).print(table)


def parse_books(text: str) -> list[int | str]:
    """`84,50133` or `84,/path/to/file.txt`: Gutenberg ids as ints, anything else as a file path."""
    return [int(item) if item.strip().isdigit() else item.strip() for item in text.split(",") if item.strip()]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    keep_freed_memory()  # as the CLI does: langinterp/heap.py
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=120.0, help="training seconds per recipe")
    parser.add_argument("--books", type=parse_books, default=[84], help="ids or paths, comma-separated")
    parser.add_argument("--holdout", type=float, default=0.1, help="tail fraction of each book held out")
    parser.add_argument(
        "--recipes",
        default=",".join(DEFAULT_RECIPES),
        help="recipe names (recipes/<name>.toml) or paths, comma-separated",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override applied to every recipe after the benchmark's own (repeatable)",
    )
    parser.add_argument("--mirror", default=None, help="Gutenberg mirror URL (default: LANGINTERP_MIRROR)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.recipes.split(",") if name.strip()]
    rows = []
    for name in names:
        print(f"{name}: training for {args.budget_s:g} s ...", file=sys.stderr, flush=True)
        row = measure(name, args.budget_s, args.books, args.holdout, args.mirror, args.settings)
        print(
            f"{name}: {row['valid_bpc']:.3f} bits/char held out after {row['train_s']:.1f} s "
            f"(load {row['load_before']:.2f} -> {row['load_after']:.2f})",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    print_table(rows, args.budget_s)
    report = {
        "budget_s": args.budget_s,
        "books": args.books,
        "holdout": args.holdout,
        "machine": machine(),
        "overrides": {
            "all": common_overrides(args.books, args.holdout),
            "neural": NEURAL_OVERRIDES,
            "gbm": GBM_OVERRIDES,
            "user": args.settings,
            "valid_chars_per_epoch": VALID_CHARS,
        },
        "command": " ".join(
            ["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
