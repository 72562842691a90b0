"""`langinterp runs` (a table of every run), `langinterp runs show R` (one run's details and history) and
`langinterp runs remove R...` (delete runs)."""

from __future__ import annotations

import csv
import math
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from langinterp.cli.app import app, console, err_console
from langinterp.errors import UsageError
from langinterp.paths import runs_dir
from langinterp.runs import (
    BrokenRunError,
    RunDir,
    RunInfo,
    find_run,
    is_timestamped_name,
    remove_run,
    scan_runs,
)

runs_app = typer.Typer(help="List training runs, show one run's details and metric history, remove runs.")
app.add_typer(runs_app, name="runs")

EIGHTHS = " ▁▂▃▄▅▆▇█"


def _when(created: str) -> str:
    """An ISO time stamp in the reader's local time, to the minute."""
    try:
        return datetime.fromisoformat(created).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return created


def _count(value: int) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return str(value)


def _bpc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@runs_app.callback(invoke_without_command=True)
def runs(ctx: typer.Context) -> None:
    """A table of every run, newest last: recipe, model, size, epochs, best held-out bits per character."""
    if ctx.invoked_subcommand is not None:
        return
    listing = scan_runs()
    if listing.runs:
        console.print(_runs_table([info for _, info in listing.runs]))
    else:
        console.print(f"no runs in {escape(str(runs_dir()))}; train one with `langinterp train RECIPE`")
    # A broken run is a note on stderr, not a failure: the other runs are still worth seeing.
    for broken in listing.skipped:
        err_console.print(
            f"[yellow]skipped {escape(str(broken.path))}:[/] {escape(broken.reason)}",
            highlight=False,
            soft_wrap=True,
        )


def _name_cell(info: RunInfo) -> str:
    """A run's name and, dimmed under it, its recipe and start time, unless the name says both (as the
    names that `langinterp train` gives do: recipe-time)."""
    if is_timestamped_name(info.name, info.recipe_name):
        return escape(info.name)
    return f"{escape(info.name)}\n[dim]{escape(info.recipe_name)}, {_when(info.created)}[/]"


def _runs_table(infos: list[RunInfo]) -> Table:
    """A table of runs that fits an 80-column terminal: the data kind shows only when it is not the usual
    next-character one, the status only while a run is not finished. Names never wrap: they are what
    --run takes, and a name folded over three lines cannot be copied; where they are long, the other
    columns fold instead."""
    table = Table(
        caption=f"runs: {escape(str(runs_dir()))}", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False
    )
    table.add_column("name", no_wrap=True)
    table.add_column("model", overflow="fold")
    for column in ("params", "epochs", "valid bpc"):
        table.add_column(column, justify="right", overflow="fold")
    for info in infos:
        table.add_row(
            _name_cell(info),
            info.model_type if info.data_kind == "sequence" else f"{info.model_type} ({info.data_kind})",
            _count(info.parameters),
            str(info.epochs) if info.status == "finished" else f"{info.epochs} {info.status}",
            _bpc(info.best_valid_bpc),
        )
    return table


def epoch_history(path: Path) -> list[dict[str, float]]:
    """One row per epoch from a run's metrics.csv: the last value each metric took in that epoch.

    Lightning logs per step (`*_step`, dropped here) and per epoch (`*_epoch`, shown without the suffix);
    `steps` is the last optimizer step of the epoch.
    """
    if not path.is_file():
        return []
    epochs: dict[int, dict[str, float]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                epoch = int(float(row.get("epoch") or "nan"))
            except ValueError:
                continue
            values = epochs.setdefault(epoch, {"epoch": float(epoch)})
            for key, raw in row.items():
                if not raw or key == "epoch" or key.endswith("_step"):
                    continue
                name = "steps" if key == "step" else key.removesuffix("_epoch")
                try:
                    values[name] = float(raw)
                except ValueError:
                    continue
    return [epochs[epoch] for epoch in sorted(epochs)]


def bar_chart(values: list[float | None], low: float, high: float, height: int = 4) -> list[str]:
    """Rows (top first) of a column chart in eighth blocks: one column per value, None left blank.

    Values are scaled between `low` and `high` so that the lowest still shows one eighth of a block.
    """
    levels = height * 8
    span = high - low if high > low else 1.0
    units = [None if value is None else 1 + round((value - low) / span * (levels - 1)) for value in values]
    rows = []
    for row in range(height - 1, -1, -1):
        cells = [" " if unit is None else EIGHTHS[min(max(unit - row * 8, 0), 8)] for unit in units]
        rows.append("".join(cells))
    return rows


def _resample(values: list[float | None], width: int) -> list[float | None]:
    """At most `width` values, evenly spaced, first and last kept: long runs still fit a terminal."""
    if len(values) <= width:
        return values
    return [values[round(index * (len(values) - 1) / (width - 1))] for index in range(width)]


def loss_plot(history: list[dict[str, float]], width: int = 60, height: int = 4) -> list[str]:
    """Train and valid loss per epoch, one chart each on a shared scale, labelled with its range."""
    series = {
        name: _resample([row.get(name) for row in history], width)
        for name in ("train_loss", "valid_loss")
        if any(name in row for row in history)
    }
    present = [value for values in series.values() for value in values if value is not None]
    present = [value for value in present if math.isfinite(value)]
    if not present:
        return []
    low, high = min(present), max(present)
    lines = []
    for name, values in series.items():
        finite = [value if value is not None and math.isfinite(value) else None for value in values]
        for index, row in enumerate(bar_chart(finite, low, high, height)):
            axis = {0: f"{high:8.4f} ┤", height - 1: f"{low:8.4f} ┤"}.get(index, f"{'':9}│")
            lines.append(f"{name if index == 0 else '':<11}{axis}{row}")
    return lines


def _format(value: object) -> str:
    """A number as a person reads it: whole numbers and large ones to the unit with thousands separated
    (a rate of 72,281 characters a second, not 7.228e+04), small ones to four significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.2e}" if abs(value) < 1e-3 else f"{value:.4g}"


def _fact(value: object) -> str:
    """One of run.json's further facts: a mapping one `key value` line per entry, and a mapping inside it
    on its entry's line as `key: name value, name value`, instead of Python's repr of the whole."""
    if not isinstance(value, dict):
        return _format(value)
    return "\n".join(
        f"{key}: " + ", ".join(f"{name} {_format(inner)}" for name, inner in item.items())
        if isinstance(item, dict)
        else f"{key} {_format(item)}"
        for key, item in value.items()
    )


def table_columns(history: list[dict[str, float]]) -> list[str]:
    """Epoch, steps, then every metric but a `*_loss` whose `*_bpc` is there (the same number over ln 2)."""
    names = {key for row in history for key in row} - {"epoch", "steps"}
    shown = {name for name in names if not (name.endswith("_loss") and f"{name[:-5]}_bpc" in names)}
    return ["epoch", "steps", *sorted(shown)]


@runs_app.command("show")
def show(
    run: str | None = typer.Argument(None, help="Run name or directory (default: the newest run)."),
) -> None:
    """A run's facts, its recipe, and its metrics per epoch with a small plot of the loss curves."""
    found: RunDir = find_run(run)
    info = found.info()
    facts = Table(show_header=False, box=None, title=escape(info.name), title_justify="left")
    for key, value in (
        ("path", str(found.path)),
        ("recipe", info.recipe_name),
        ("model", info.model_type),
        ("data", info.data_kind),
        ("status", info.status),
        ("created", _when(info.created)),
        ("parameters", f"{info.parameters:,}"),
        ("epochs", str(info.epochs)),
        ("steps", f"{info.steps:,}"),
        ("best valid bits/char", _bpc(info.best_valid_bpc)),
        *((key, _fact(value)) for key, value in info.extra.items()),
    ):
        facts.add_row(f"[bold]{escape(key)}[/]", escape(value))
    console.print(facts)
    console.rule("recipe", style="dim")
    recipe = found.recipe_path.read_text(encoding="utf-8")
    console.print(Syntax(recipe, "toml", background_color="default", word_wrap=True))
    history = epoch_history(found.metrics_path)
    console.rule("metrics per epoch", style="dim")
    if not history:
        console.print("no metrics recorded")
        return
    columns = table_columns(history)
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, justify="right", overflow="fold")
    for row in history:
        table.add_row(*("" if key not in row else _format(row[key]) for key in columns))
    console.print(table)
    plot = loss_plot(history)
    if plot:
        console.print()
        for line in plot:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _status(run: RunDir) -> str:
    """A run's status, or `broken` when its run.json cannot be read (such a run can still be removed)."""
    try:
        return run.info().status
    except BrokenRunError:
        return "broken"


@runs_app.command("remove")
def remove(
    runs: list[str] = typer.Argument(None, help="Run names or directories.", show_default=False),
    failed: bool = typer.Option(False, "--failed", help="Also every run whose training failed."),
    force: bool = typer.Option(False, "--force", help="Also runs marked running (one may still train)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before removing."),
) -> None:
    """Delete runs: their checkpoints, metrics and samples. Asks first, unless --yes."""
    if not runs and not failed:
        raise UsageError("name the runs to remove, or give --failed")
    chosen = {found.path.resolve(): found for found in map(find_run, runs or [])}
    if failed:
        chosen |= {run.path.resolve(): run for run, info in scan_runs().runs if info.status == "failed"}
    if not chosen:
        console.print("no failed runs to remove")
        return
    busy = [run.name for run in chosen.values() if _status(run) == "running"]
    if busy and not force:
        raise UsageError(
            f"run {busy[0]!r} is marked running (it may still be training); --force removes it anyway"
        )
    names = ", ".join(run.name for run in chosen.values())
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not at a terminal to confirm removing {names}: add --yes")
        if not typer.confirm(f"remove {len(chosen)} run(s): {names}?"):
            console.print("nothing removed")
            return
    for run in chosen.values():
        remove_run(run)
        console.print(f"removed {escape(run.name)}", highlight=False)
