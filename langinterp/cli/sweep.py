"""`langinterp sweep RECIPE --budget N --param KEY=KIND:...`: hyper-parameter search with nevergrad.

The library runs the trials and reports each start and end through a callback; this module only renders
them as a live table and prints where the best recipe went.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from langinterp.cli.app import Mirror, app, console
from langinterp.errors import UsageError

if TYPE_CHECKING:
    from langinterp.sweep import Sweep, Trial

STATUS_STYLE = {"running": "yellow", "finished": "green", "failed": "red", "interrupted": "magenta"}


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _headers(keys: list[str]) -> list[str]:
    """Each key's last part where that is unambiguous (lr, width), so the table fits a terminal."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [short if last.count(short) == 1 else key for key, short in zip(keys, last, strict=True)]


def trial_table(sweep: Sweep) -> Table:
    """Every trial so far: its number, parameter values, status, bits/char and the best score up to it."""
    keys = [spec.partition("=")[0] for spec in sweep.params]
    table = Table(
        "#",
        *_headers(keys),
        "status",
        "bits/char",
        "best",
        title=f"sweep {escape(sweep.name)}: {sweep.done()} of {sweep.budget} trials",
        header_style="bold",
        box=None,
    )
    best: float | None = None
    for trial in sweep.trials:
        if trial.score is not None and (best is None or trial.score < best):
            best = trial.score
        style = STATUS_STYLE.get(trial.status, "")
        status = f"[{style}]{trial.status}[/]" if style else trial.status
        if trial.error:
            status += f" [dim]{escape(trial.error)}[/]"
        table.add_row(
            str(trial.number),
            *(escape(_value(trial.values.get(key))) for key in keys),
            status,
            "" if trial.score is None else f"{trial.score:.4f}",
            "" if best is None else f"{best:.4f}",
        )
    return table


@app.command()
def sweep(
    recipe: Path | None = typer.Argument(
        None, help="Recipe TOML file to start from (none with --resume).", show_default=False
    ),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, the same for every trial."),
    params: list[str] = typer.Option(
        None,
        "--param",
        "-p",
        help="A key to search: KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, KEY=int:LOW:HIGH or KEY=choice:A,B,... "
        "Repeat for several.",
        show_default=False,
    ),
    budget: int | None = typer.Option(
        None, "--budget", "-n", help="Trials in all (with --resume: default the stored budget).", min=1
    ),
    optimizer: str = typer.Option("OnePlusOne", "--optimizer", help="A nevergrad optimizer, e.g. NGOpt."),
    workers: int = typer.Option(1, "--workers", "-j", help="Trials trained at once, in processes.", min=1),
    name: str | None = typer.Option(
        None, "--name", help="Sweep name (default: recipe-time); an existing sweep of that name continues."
    ),
    resume: str | None = typer.Option(
        None, "--resume", help="Continue the named sweep where it stopped.", show_default=False
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the optimizer's proposals.", min=0),
    out: Path | None = typer.Option(None, "--out", help="Also copy best.toml here.", show_default=False),
    mirror: Mirror = None,
) -> None:
    """Search hyper-parameters: every trial trains a run, scored by held-out bits/char; writes best.toml."""
    from langinterp.gutenberg import resolve_mirror
    from langinterp.recipe import load_recipe
    from langinterp.sweep import import_nevergrad, resume_sweep, run_sweep, start_sweep

    if resume is not None:
        if recipe is not None or overrides or params:
            raise UsageError("--resume continues a sweep with its own recipe and parameters; give neither")
        import_nevergrad()
        state = resume_sweep(resume, budget)
    else:
        if recipe is None:
            raise UsageError("give a recipe file to sweep (or --resume NAME)")
        if budget is None:
            raise UsageError("give --budget N, the number of trials")
        base = load_recipe(recipe, overrides or [])
        state = start_sweep(base, params or [], budget=budget, optimizer=optimizer, name=name, seed=seed)
    console.print(f"sweep [bold]{escape(state.name)}[/]: {escape(str(state.path))}", highlight=False)
    try:
        with Live(trial_table(state), console=console, refresh_per_second=4) as live:

            def show(current: Sweep, _trial: Trial) -> None:
                live.update(trial_table(current))

            try:
                run_sweep(state, workers=workers, mirror=resolve_mirror(mirror), progress=show)
            finally:
                live.update(trial_table(state))  # the last frame shows interrupted trials as such
    finally:
        if not console.is_terminal:
            console.line()  # Live ends its last frame with a newline on terminals only
    _report(state, out)


def _report(state: Sweep, out: Path | None) -> None:
    best = state.best()
    if best is None:
        raise UsageError(f"no trial of sweep {state.name} finished with a held-out score; see the table")
    console.print(
        f"best: trial {best.number}, {best.score:.4f} bits/char, run [bold]{escape(best.run)}[/]",
        highlight=False,
    )
    console.print(f"best recipe: {escape(str(state.best_path))}", highlight=False)
    if out is not None:
        shutil.copyfile(state.best_path, out)
        console.print(f"copied to {escape(str(out))}", highlight=False)
