"""`langinterp generate` end to end: a tiny MLP trained once to memorise a text, sampled through the CLI."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from rich.console import Console

from langinterp.cli import run
from langinterp.models import build_model
from langinterp.recipe import resolve
from langinterp.runs import RunDir, checkpoint_hyperparameters, create_run

TEXT = "the quick brown fox jumps over the lazy dog. "
CONTEXT = 8


@dataclass
class Trained:
    home: Path
    run: RunDir


def train_tiny(home: Path) -> RunDir:
    """An MLP that memorises TEXT in two epochs (a few seconds on a CPU)."""
    from langinterp.training import train

    book = home / "fox.txt"
    book.write_text(TEXT * 40, encoding="utf-8")
    recipe = resolve(
        {},
        [
            f"data.books=['{book}']",
            f"data.context={CONTEXT}",
            "model.hidden.width=32",
            "optimizer.name='adam'",
            "optimizer.lr=2e-2",
            "trainer.max_epochs=2",
            "trainer.batch_size=32",
            "trainer.accelerator='cpu'",
            "trainer.samples=0",
        ],
        name="fox",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LANGINTERP_HOME", str(home))
        return train(recipe, run_name="fox", quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    home = tmp_path_factory.mktemp("trained-home")
    return Trained(home, train_tiny(home))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_generation_continues_the_memorised_text(trained: Trained, capsys) -> None:
    code, out, _ = cli(
        capsys, "generate", "--run", str(trained.run.path), "-p", TEXT[:CONTEXT], "-n", "90", "--greedy"
    )
    assert code == 0
    assert out == (TEXT * 3)[: CONTEXT + 90] + "\n"


def test_a_seed_repeats_samples_and_each_sample_gets_its_own_seed(trained: Trained, capsys) -> None:
    args = ("generate", "--run", str(trained.run.path), "-p", "the", "-n", "40", "-t", "3.0")
    _, first, _ = cli(capsys, *args, "--seed", "3")
    _, again, _ = cli(capsys, *args, "--seed", "3")
    _, fourth, _ = cli(capsys, *args, "--seed", "4")
    assert first == again
    assert len(first) == len("the") + 40 + 1
    code, both, _ = cli(capsys, *args, "--seed", "3", "--num-samples", "2")
    assert code == 0
    assert both.startswith(first)
    assert both.endswith(fourth)
    assert "\u2500" in both[len(first) : -len(fourth)]  # a rule between the samples


def test_control_characters_are_marked_on_a_terminal_and_kept_in_a_pipe(
    trained: Trained, capsys, monkeypatch
) -> None:
    args = ("generate", "--run", str(trained.run.path), "-p", "the", "-n", "400", "-t", "50", "--seed", "1")
    _, piped, _ = cli(capsys, *args)
    controls = {c for c in piped if ord(c) < 32 or ord(c) == 127} - {"\n", "\t"}
    assert controls  # at this temperature the samples take control characters too
    monkeypatch.setattr("langinterp.cli.generate.console", Console(force_terminal=True, color_system=None))
    code, shown, _ = cli(capsys, *args)
    assert code == 0
    assert len(shown) == len(piped)
    for raw, drawn in zip(piped, shown, strict=True):
        assert drawn == ("\u00b7" if raw in controls else raw)


def test_the_newest_run_and_a_checkpoint_file_alone_both_work(
    trained: Trained, capsys, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("LANGINTERP_HOME", str(trained.home))
    code, out, err = cli(capsys, "generate", "-p", "the quick", "-n", "6", "--greedy")
    assert (code, out) == (0, "the quick brown\n")
    assert "run fox, best checkpoint" in err
    copy = tmp_path / "copy.ckpt"
    shutil.copy(trained.run.checkpoint("last"), copy)
    monkeypatch.setenv("LANGINTERP_HOME", str(tmp_path / "empty"))
    code, out, _ = cli(capsys, "generate", "--checkpoint", str(copy), "-p", "lazy", "-n", "5", "--greedy")
    assert (code, out) == (0, "lazy dog.\n")


def test_prompt_file_is_read_and_folded(trained: Trained, capsys, tmp_path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("over the \u201clazy", encoding="utf-8")
    code, out, _ = cli(
        capsys,
        "generate",
        "--run",
        str(trained.run.path),
        "--prompt-file",
        str(prompt),
        "-n",
        "1",
        "--greedy",
    )
    assert code == 0
    assert out.startswith('over the "lazy')


def centered_run() -> RunDir:
    """A run of an (untrained) centered model, with a real checkpoint: enough to be refused."""
    recipe = resolve({}, ["data.kind='centered'", "data.context=5", "model.hidden.width=8"], name="middle")
    created = create_run(recipe, "middle")
    state = {f"model.{key}": value for key, value in build_model(recipe).state_dict().items()}
    payload = {
        "hyper_parameters": checkpoint_hyperparameters(recipe),
        "state_dict": state,
        "epoch": 0,
        "global_step": 0,
    }
    torch.save(payload, created.checkpoint("best"))
    return created


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["-p", ""], "the prompt is empty"),
        (None, ["-p", "\u4e2d\u6587"], "the prompt is empty"),
        (None, [], "give a prompt"),
        (None, ["-p", "x", "--prompt-file", "p.txt"], "not both"),
        (None, ["--prompt-file", "missing.txt"], "does not exist"),
        (None, ["-p", "x", "--run", "nowhere"], "run 'nowhere' not found"),
        (None, ["-p", "x"], "no sequence run"),
        ("text", ["-p", "x", "--checkpoint", "notes.txt"], "is not a readable langinterp checkpoint"),
        ("foreign", ["-p", "x", "--checkpoint", "foreign.ckpt"], "is not a langinterp checkpoint"),
        ("weightless", ["-p", "x", "--checkpoint", "weightless.ckpt"], "is not a langinterp checkpoint"),
        (None, ["-p", "x", "--checkpoint", "absent.ckpt"], "does not exist"),
        ("centered", ["-p", "x", "--run", "middle"], "centered data"),
        ("running", ["-p", "x"], "run 'fresh' has no checkpoint yet (it saves one at the end of each epoch)"),
        ("failed", ["-p", "x"], "run 'fresh' failed before it saved a checkpoint: the loss became nan"),
        (None, ["-p", "x", "--temperature", "0"], "temperature must be above 0"),
        (None, ["-p", "x", "--top-p", "2"], "top-p"),
        (None, ["-p", "x", "--num-samples", "0"], "--num-samples"),
    ],
)
def test_mistakes_end_in_one_clear_line(setup, args, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if setup == "text":
        Path("notes.txt").write_text("not a checkpoint\n")
    elif setup == "foreign":
        torch.save({"x": 1}, "foreign.ckpt")
    elif setup == "weightless":  # our recipe inside, but no weights
        recipe = resolve({}, name="weightless")
        torch.save({"hyper_parameters": checkpoint_hyperparameters(recipe)}, "weightless.ckpt")
    elif setup == "centered":
        centered_run()
    elif setup in ("running", "failed"):  # a run in its first epoch, or one that failed there
        fresh = create_run(resolve({}, name="fresh"), "fresh")
        if setup == "failed":
            fresh.update_info(status="failed", extra={"error": "the loss became nan"})
    code, out, err = cli(capsys, "generate", *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_a_centered_run_is_passed_over_when_picking_the_newest(trained: Trained, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LANGINTERP_HOME", str(trained.home))
    centered_run()
    try:
        code, out, err = cli(capsys, "generate", "-p", "the quick", "-n", "7", "--greedy")
    finally:
        shutil.rmtree(trained.home / "runs" / "middle")
    assert (code, out) == (0, "the quick brown \n")
    assert "run fox" in err
