"""`langinterp train RECIPE [key=value ...]`: train a neural model into a new run directory, or resume one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from langinterp.cli.app import Mirror, RunName, app, console
from langinterp.errors import UsageError

if TYPE_CHECKING:
    from langinterp.runs import RunDir


def _split_arguments(
    recipe: str | None, overrides: list[str], resume: bool
) -> tuple[Path | None, str | None, list[str]]:
    """(recipe file, run to resume, overrides). With --resume the first positional argument, unless it is a
    key=value override, names the run (none: the newest run), and the recipe is the run's own."""
    if not resume:
        if recipe is None:
            raise UsageError("give a recipe file to train (or --resume [RUN])")
        return Path(recipe), None, overrides
    if recipe is not None and "=" in recipe:
        return None, None, [recipe, *overrides]
    return None, recipe, overrides


@app.command()
def train(
    recipe: str | None = typer.Argument(
        None,
        help="Recipe TOML file; with --resume, the run to continue (default: the newest).",
        show_default=False,
    ),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. trainer.max_epochs=5."),
    run_name: RunName = None,
    resume: bool = typer.Option(
        False, "--resume", help="Continue a run from its last checkpoint; overrides may change trainer.*."
    ),
    mirror: Mirror = None,
    accelerator: str | None = typer.Option(
        None, "--accelerator", help="auto (CUDA when present), cpu or gpu."
    ),
    devices: str | None = typer.Option(None, "--devices", help="Devices per node: a number or 'auto'."),
    precision: str | None = typer.Option(None, "--precision", help="auto, 32, bf16-mixed or 16-mixed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model on its recipe's books: checkpoints, metrics and samples go to a new run directory."""
    from langinterp.gutenberg import resolve_mirror
    from langinterp.recipe import load_recipe
    from langinterp.runs import find_run
    from langinterp.training import is_global_zero, train

    path, target, changes = _split_arguments(recipe, overrides or [], resume)
    if path is not None:
        resolved = load_recipe(path, changes)
    else:
        resolved = find_run(target).recipe().with_overrides(changes)
    run = train(
        resolved,
        run_name=run_name,
        resume=(target or True) if resume else None,
        mirror=resolve_mirror(mirror),
        accelerator=accelerator,
        devices=int(devices) if devices and devices.isdigit() else devices,
        precision=precision,
        quiet=quiet,
    )
    if is_global_zero():
        _report(run)


def _report(run: RunDir) -> None:
    info = run.info()
    console.print(
        f"run [bold]{escape(run.name)}[/]: {info.epochs} epochs, {info.steps} steps", highlight=False
    )
    console.print(escape(str(run.path)), highlight=False)
    final = info.extra.get("final", {})
    if final:
        table = Table("metric", "value", box=None, header_style="bold")
        for key in sorted(final):
            value = final[key]
            table.add_row(key, f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4f}")
        console.print(table)
    if info.best_valid_bpc is not None:
        console.print(f"best validation: {info.best_valid_bpc:.4f} bits/char", highlight=False)
    for name, report in info.extra.get("fold", {}).items():
        console.print(
            f"{escape(name)}: {report['folded']:,} characters folded to ASCII, {report['dropped']:,} dropped",
            highlight=False,
        )
