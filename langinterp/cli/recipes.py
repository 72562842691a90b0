"""`langinterp recipe ...`: show a resolved recipe, check recipe files, list every option."""

from pathlib import Path

import typer
from rich.syntax import Syntax
from rich.table import Table

from langinterp import schema
from langinterp.cli.app import app, console
from langinterp.errors import UsageError
from langinterp.recipe import load_recipe

recipe_app = typer.Typer(help="Show, check and document recipes.", no_args_is_help=True)
app.add_typer(
    recipe_app, name="recipe", help="Show a resolved recipe, check recipe files, list every option."
)

DEFAULT_RECIPES = Path("recipes")


@recipe_app.command("show")
def show(
    recipe: Path = typer.Argument(..., help="Recipe TOML file."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. optimizer.lr=1e-3."),
) -> None:
    """Print the fully resolved recipe (every default filled in) as TOML."""
    resolved = load_recipe(recipe, overrides or [])
    console.print(Syntax(resolved.to_toml(), "toml", theme="ansi_dark", background_color="default"))


@recipe_app.command("check")
def check(
    files: list[Path] = typer.Argument(None, help="Recipe files (default: every recipes/*.toml)."),
) -> None:
    """Validate recipes; exits non-zero on the first invalid one."""
    paths = files or sorted(DEFAULT_RECIPES.glob("*.toml"))
    if not paths:
        raise UsageError(f"no recipes to check: give files or run where {DEFAULT_RECIPES}/ holds *.toml")
    for path in paths:
        resolved = load_recipe(path)
        console.print(f"[green]ok[/] {path} [dim]({resolved.model['type']})[/]")


@recipe_app.command("options")
def options(
    model_type: str = typer.Option("mlp", "--type", help=f"Model family: {', '.join(schema.model_types())}."),
) -> None:
    """List every recipe option for a model family: key, default, allowed values, meaning."""
    if model_type not in schema.MODEL_TABLES:
        raise UsageError(f"--type must be one of {', '.join(schema.model_types())}; got {model_type!r}")
    table = Table("key", "default", "allowed", "meaning", box=None, header_style="bold")
    for key, option in schema.flatten(schema.recipe_table(model_type)).items():
        allowed = ", ".join(part for part in (", ".join(option.choices or ()), _range(option)) if part)
        table.add_row(key, repr(option.default), allowed, option.doc)
    console.print(table)


def _range(option: schema.Option) -> str:
    if option.minimum is None and option.maximum is None:
        return ""
    low = "" if option.minimum is None else f"{option.minimum:g}"
    high = "" if option.maximum is None else f"{option.maximum:g}"
    return f"{low}..{high}"
