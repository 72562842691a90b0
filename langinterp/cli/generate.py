"""`langinterp generate`: continue a prompt with a trained model, streaming characters as they are made."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from langinterp.cli.app import CONTROL_MARKS, app, console, err_console
from langinterp.errors import NotFoundError, UsageError


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise UsageError("give either --prompt or --prompt-file, not both")
    if prompt_file is None:
        if prompt is None:
            raise UsageError("give a prompt: --prompt TEXT or --prompt-file PATH")
        return prompt
    if not prompt_file.is_file():
        raise NotFoundError(f"prompt file {prompt_file} does not exist")
    try:
        return prompt_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"prompt file {prompt_file} is not UTF-8 text") from None


@app.command()
def generate(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Text to continue (folded to ASCII)."),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", help="Read the prompt from a UTF-8 file."),
    run: str | None = typer.Option(
        None, "--run", help="Run name or directory (default: the newest run trained on sequence data)."
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="best or last of the run (default: best), or the path of a .ckpt file."
    ),
    num_chars: int = typer.Option(500, "--num-chars", "-n", help="Characters to generate per sample."),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample among the k most likely characters."),
    temperature: float = typer.Option(1.0, "--temperature", "-t", help="Above 1 flatter, below 1 sharper."),
    top_p: float | None = typer.Option(
        None, "--top-p", help="Sample among the most likely characters holding this much probability."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed for repeatable text (sample i uses seed + i)."
    ),
    greedy: bool = typer.Option(False, "--greedy", help="Always take the most likely character."),
    num_samples: int = typer.Option(1, "--num-samples", help="Independent continuations of the prompt."),
) -> None:
    """Continue a prompt with a trained model; characters appear as they are made."""
    from langinterp.inference import load_for_inference
    from langinterp.sampling import SamplingOptions, generate, prompt_codes
    from langinterp.text import decode

    if num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1; got {num_samples}")
    text = _read_prompt(prompt, prompt_file)
    folded = decode(prompt_codes(text))
    options = SamplingOptions(top_k=top_k, temperature=temperature, top_p=top_p, greedy=greedy)
    by_run = checkpoint is None or checkpoint in ("best", "last")
    loaded = load_for_inference(run, checkpoint, data_kind="sequence" if by_run and run is None else None)
    # Every stream is checked when made, so a model that cannot generate fails before anything is printed.
    streams = [
        generate(
            loaded.model,
            folded,
            num_chars,
            options,
            seed=None if seed is None else seed + index,
            data_kind=loaded.data_kind,
        )
        for index in range(num_samples)
    ]
    err_console.print(f"[dim]{escape(loaded.source)}[/]", highlight=False)
    out = console.file
    marks = CONTROL_MARKS if console.is_terminal else {}
    for index, stream in enumerate(streams):
        if index:
            console.rule(style="dim")
        console.print(folded, style="dim", end="", markup=False, highlight=False, soft_wrap=True)
        for char in stream:
            out.write(char.translate(marks))
            out.flush()
        out.write("\n")
