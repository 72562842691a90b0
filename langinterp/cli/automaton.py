"""`langinterp automaton`: reapply a centered model to a whole text, step after step."""

from __future__ import annotations

import json

import typer
from rich.markup import escape

from langinterp.cli.app import CONTROL_MARKS, app, console, err_console
from langinterp.errors import UsageError

# Each step is one aligned terminal line, so newline and tab get visible marks too (JSON keeps them all).
VISIBLE = {**CONTROL_MARKS, ord("\n"): "\u21b5", ord("\t"): "\u2192"}


@app.command()
def automaton(
    text: str = typer.Option("The monster awakes", "--text", help="The starting text (folded to ASCII)."),
    reapply: int = typer.Option(10, "--reapply", help="How many times to rewrite the whole text."),
    run: str | None = typer.Option(
        None, "--run", help="Run name or directory (default: the newest run trained on centered data)."
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="best or last of the run (default: best), or the path of a .ckpt file."
    ),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample among the k most likely characters."),
    temperature: float = typer.Option(1.0, "--temperature", "-t", help="Above 1 flatter, below 1 sharper."),
    top_p: float | None = typer.Option(None, "--top-p", help="Sample within this much probability mass."),
    greedy: bool = typer.Option(False, "--greedy", help="Always take the most likely character."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for a repeatable sequence of steps."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per step on stdout."),
) -> None:
    """Run a centered model as a language cellular automaton: every character re-predicted at once."""
    from langinterp.automaton import run_automaton
    from langinterp.inference import load_for_inference
    from langinterp.sampling import SamplingOptions

    options = SamplingOptions(top_k=top_k, temperature=temperature, top_p=top_p, greedy=greedy)
    by_run = checkpoint is None or checkpoint in ("best", "last")
    loaded = load_for_inference(run, checkpoint, data_kind="centered" if by_run and run is None else None)
    if loaded.data_kind != "centered":
        raise UsageError(
            f"{loaded.source} was trained on {loaded.data_kind} data; the automaton needs a centered model "
            "(train one with `langinterp train recipes/centered.toml`)"
        )
    if not as_json:
        err_console.print(f"[dim]{escape(loaded.source)}[/]", highlight=False)
    steps = run_automaton(
        loaded.model, text, reapply, options, context=loaded.recipe.data["context"], seed=seed
    )
    width = len(str(reapply))
    for step, line in enumerate(steps):
        if as_json:
            console.file.write(json.dumps({"step": step, "text": line}) + "\n")
        else:
            console.print(
                f"[dim]{step:>{width}}[/] │ {escape(line.translate(VISIBLE))}",
                highlight=False,
                soft_wrap=True,
            )
