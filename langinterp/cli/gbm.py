"""`langinterp gbm`: train a LightGBM next-character model from a gbm recipe, with a bar per round."""

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from langinterp.cli.app import Mirror, RunName, app, console


@app.command()
def gbm(
    recipe: Path = typer.Argument(..., help="Recipe TOML file whose model.type is gbm (recipes/gbm.toml)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. model.rounds=20."),
    run_name: RunName = None,
    mirror: Mirror = None,
) -> None:
    """Train a LightGBM booster on the previous data.context characters; save it in a new run directory."""
    from langinterp.gbm_training import check_gbm_recipe, train_gbm
    from langinterp.gutenberg import resolve_mirror
    from langinterp.recipe import load_recipe

    resolved = load_recipe(recipe, overrides or [])
    check_gbm_recipe(resolved)
    progress = Progress(
        TextColumn("boosting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("rounds", total=resolved.model["rounds"], loss="")

    def advance(done: int, total: int, metrics: dict[str, float]) -> None:
        loss = f"held-out {metrics['valid_bpc']:.3f} bits/char" if "valid_bpc" in metrics else ""
        progress.update(task, completed=done, total=total, loss=loss)

    with progress:
        run = train_gbm(resolved, run_name=run_name, mirror=resolve_mirror(mirror), progress=advance)
    info = run.info()
    held_out = (
        f"{info.best_valid_bpc:.4f} bits/char held out"
        if info.best_valid_bpc is not None
        else "no held-out text"
    )
    classes = info.extra.get("classes", "?")
    console.print(
        f"run [bold]{escape(run.name)}[/]: {info.epochs} rounds kept, {classes} characters, {held_out}\n"
        f"{escape(str(run.path))}",
        highlight=False,
    )
