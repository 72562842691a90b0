"""`langinterp evaluate`, `langinterp runs` and `langinterp runs show` on a tiny run trained once."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from test_cli_generate import CONTEXT, TEXT, Trained, centered_run, cli, train_tiny

from langinterp.cli.app import console
from langinterp.cli.runs import EIGHTHS, bar_chart, epoch_history, table_columns
from langinterp.recipe import resolve
from langinterp.runs import INFO_FILE, RunDir, create_run, find_run, list_runs, scan_runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    home = tmp_path_factory.mktemp("trained-home")
    return Trained(home, train_tiny(home))


def test_evaluate_scores_the_held_out_tail_as_training_did(trained: Trained, capsys) -> None:
    code, out, _ = cli(capsys, "evaluate", "--run", str(trained.run.path), "--json")
    assert code == 0
    result = json.loads(out)
    held_out = round(len(TEXT) * 40 * 0.1)  # data.holdout of the one training book
    assert result["characters"] == held_out - CONTEXT
    assert result["text"] == "held-out validation text"
    assert result["bits_per_char"] == pytest.approx(trained.run.info().best_valid_bpc, rel=1e-3)
    assert result["accuracy"] == 1.0
    assert result["model"].startswith("run fox, best checkpoint")


def test_evaluate_a_file_with_either_checkpoint_as_a_table(trained: Trained, capsys, tmp_path) -> None:
    other = tmp_path / "other.txt"
    other.write_text(TEXT * 3, encoding="utf-8")
    run = str(trained.run.path)
    code, out, _ = cli(
        capsys, "evaluate", "--run", run, "--checkpoint", "last", "--file", str(other), "--json"
    )
    assert code == 0
    assert json.loads(out)["characters"] == len(TEXT) * 3 - CONTEXT
    assert "last checkpoint" in json.loads(out)["model"]
    code, out, _ = cli(capsys, "evaluate", "--run", run, "--file", str(other))
    assert code == 0
    assert "bits per character" in out
    assert f"{len(TEXT) * 3 - CONTEXT:,}" in out
    assert "100.00%" in out


def test_evaluate_compares_several_runs_on_one_text(trained: Trained, capsys, tmp_path) -> None:
    twin = tmp_path / "twin"  # the same weights under another name: the same scores
    shutil.copytree(trained.run.path, twin)
    other = tmp_path / "other.txt"
    other.write_text(TEXT * 3, encoding="utf-8")
    runs = ["--run", str(trained.run.path), "--run", str(twin)]
    code, out, _ = cli(capsys, "evaluate", *runs, "--file", str(other), "--json")
    assert code == 0
    results = [json.loads(line) for line in out.splitlines()]  # one object per model, in the order given
    assert [result["model"].split(",")[0] for result in results] == ["run fox", "run twin"]
    assert results[0]["bits_per_char"] == results[1]["bits_per_char"]
    assert {result["characters"] for result in results} == {len(TEXT) * 3 - CONTEXT}
    code, out, _ = cli(capsys, "evaluate", *runs, "--file", str(other))
    assert code == 0
    rows = [line for line in out.splitlines() if "100.00%" in line]
    assert len(rows) == 2 and "run fox" in rows[0] and "run twin" in rows[1]
    assert f"on {other}" in out.replace("\n", "")
    code, out, _ = cli(capsys, "evaluate", *runs)
    assert code == 0
    assert "each on its own held-out validation text" in out
    code, out, err = cli(capsys, "evaluate", *runs, "--checkpoint", str(tmp_path / "one.ckpt"))
    assert (code, out) == (2, "")
    assert "a checkpoint file is one model" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--book", "84", "--file", "x.txt"], "either --book or --file"),
        (["--file", "x.txt", "--split", "test"], "does not go with"),
        (["--split", "train"], "--split must be valid or test"),
        (["--split", "test"], "no test text (data.test_books)"),
        (["--file", "missing.txt"], "does not exist"),
        (["--book", "eighty"], "eighty"),
        (["--checkpoint", "nothing.ckpt"], "does not exist"),
        (["--batch-size", "0"], "batch size"),
    ],
)
def test_evaluate_mistakes_end_in_one_clear_line(
    trained: Trained, args, message, capsys, monkeypatch, tmp_path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "evaluate", "--run", str(trained.run.path), *args)
    assert (code, out) == (2, "")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_runs_lists_every_run_and_says_when_there_are_none(trained: Trained, capsys, monkeypatch) -> None:
    code, out, _ = cli(capsys, "runs")
    assert code == 0
    assert "no runs in" in out
    monkeypatch.setenv("LANGINTERP_HOME", str(trained.home))
    code, out, _ = cli(capsys, "runs")
    assert code == 0
    row = next(line for line in out.splitlines() if "fox" in line)
    assert "mlp" in row
    assert f"{trained.run.info().best_valid_bpc:.4f}" in row
    assert "finished" not in row  # a status shows only while a run is not finished
    assert "centered" not in row


def test_runs_marks_centered_and_unfinished_runs(capsys) -> None:
    centered_run()
    code, out, _ = cli(capsys, "runs")
    assert code == 0
    row = next(line for line in out.splitlines() if "middle" in line)
    assert "mlp" in row
    assert "0 running" in row
    assert "(centered)" in out  # beside the model type, folded onto a second line in 80 columns


def test_runs_keeps_names_whole_and_adds_what_a_chosen_name_does_not_say(capsys, monkeypatch) -> None:
    monkeypatch.setattr(console, "width", 80)
    given = create_run(resolve({}, [], name="high_order_input_transformer"))  # recipe-time: 44 characters
    chosen = create_run(resolve({}, [], name="sparse_mlp"), "quick")
    code, out, _ = cli(capsys, "runs")
    assert code == 0
    lines = out.splitlines()
    assert any(given.path.name in line for line in lines)  # whole, not folded over several lines
    assert "high_order_input_transformer," not in out  # its name already says its recipe and start
    at = next(index for index, line in enumerate(lines) if line.split()[:1] == [chosen.path.name])
    started = datetime.fromisoformat(chosen.info().created).astimezone()  # shown in local time
    assert lines[at + 1].split()[:3] == ["sparse_mlp,", *started.strftime("%Y-%m-%d %H:%M").split()]


def test_runs_show_prints_facts_recipe_history_and_a_loss_plot(trained: Trained, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LANGINTERP_HOME", str(trained.home))
    code, out, _ = cli(capsys, "runs", "show", "fox")
    assert code == 0
    assert str(trained.run.path) in out.replace("\n", "")
    facts = out[: out.index("recipe ─")]
    assert "{" not in facts  # run.json's further facts as lines of `name value`, not a Python repr
    words = " ".join(facts.split())
    assert "fox.txt: folded 0, dropped 0" in words
    shown = re.search(r"train_bpc (\S+)", words)
    final = trained.run.info().extra["final"]
    assert shown and float(shown[1]) == pytest.approx(final["train_bpc"], rel=1e-3)
    assert f"context = {CONTEXT}" in out
    assert "metrics per epoch" in out
    assert "valid_bpc" in out
    plot = [line for line in out.splitlines() if "┤" in line]
    assert len(plot) == 4  # top and bottom of the train and the valid chart
    assert plot[0].startswith("train_loss")
    assert any(block in out for block in EIGHTHS[1:])
    code, _, err = cli(capsys, "runs", "show", "nobody")
    assert code == 2
    assert "run 'nobody' not found" in err


def untrained_run(name: str) -> RunDir:
    """A run directory with its recipe and run.json and nothing else: enough to be listed, and instant."""
    return create_run(resolve({}, [], name=name), name)


def _edited(change: Callable[[dict[str, Any]], object]) -> Callable[[bytes], bytes]:
    """A run.json rewrite that parses the file, changes its contents and writes them back as JSON."""
    return lambda text: json.dumps(change(json.loads(text))).encode()


@pytest.mark.parametrize(
    ("breaking", "reason"),
    [
        (lambda text: text[:10], "run.json: Expecting"),  # cut off mid-write
        (lambda text: b"\xff" + text, "run.json: 'utf-8' codec can't decode byte 0xff"),
        (_edited(lambda info: [info]), "run.json: a JSON list, not an object"),
        (
            _edited(lambda info: {"name": info["name"]}),
            "run.json: missing recipe_name, model_type, data_kind",
        ),
        (
            _edited(lambda info: {**info, "created": 5, "parameters": "many"}),
            "wrong type for created, parameters",
        ),
    ],
    ids=["truncated", "not-utf8", "not-an-object", "missing-fields", "wrong-types"],
)
def test_a_broken_run_is_skipped_with_a_note_and_refused_by_show(
    breaking: Callable[[bytes], bytes], reason: str, capsys
) -> None:
    good = untrained_run("good")
    bad = untrained_run("bad")
    info_file = bad.path / INFO_FILE
    info_file.write_bytes(breaking(info_file.read_bytes()))

    code, out, err = cli(capsys, "runs")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines() if "running" in line] == ["good"]
    assert len(err.splitlines()) == 1
    assert err.startswith(f"skipped {bad.path}: ")
    assert reason in err
    listing = scan_runs()
    assert [run.name for run, _ in listing.runs] == ["good"] == [run.name for run in list_runs()]
    assert [broken.path for broken in listing.skipped] == [bad.path]
    assert reason in listing.skipped[0].reason
    assert find_run() == good  # the newest readable run, though the broken one was made later

    code, out, err = cli(capsys, "runs", "show", "bad")
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1
    assert f"{bad.path} is not a langinterp run directory" in err
    assert reason in err


def test_only_broken_runs_still_list_as_none_with_the_notes(capsys) -> None:
    bad = untrained_run("bad")
    (bad.path / INFO_FILE).write_text("", encoding="utf-8")
    code, out, err = cli(capsys, "runs")
    assert code == 0
    assert "no runs in" in out
    assert err.startswith(f"skipped {bad.path}: run.json: Expecting value")


def test_listing_runs_reads_each_run_json_once(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    made = [untrained_run(name) for name in ("one", "two")]
    reads: Counter[Path] = Counter()
    read_text = Path.read_text

    def counted(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == INFO_FILE:
            reads[path.parent] += 1
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    code, out, _ = cli(capsys, "runs")
    assert code == 0 and "one" in out and "two" in out
    assert reads == {run.path: 1 for run in made}
    reads.clear()
    assert find_run(data_kind="sequence") == made[-1]
    assert reads == {run.path: 1 for run in made}


def test_the_newest_run_is_the_last_made_even_within_one_second() -> None:
    # Names that sort the other way round, made within the same second.
    made = [untrained_run(name) for name in ("zeta", "eta", "alpha")]
    assert list_runs() == made
    assert find_run() == made[-1]
    # A run recorded in whole seconds (as before) sorts by time with the others, before a later one.
    older = untrained_run("older")
    info = json.loads((older.path / INFO_FILE).read_text(encoding="utf-8"))
    (older.path / INFO_FILE).write_text(json.dumps({**info, "created": "2000-01-01T00:00:00+00:00"}))
    assert list_runs() == [older, *made]


def test_epoch_history_keeps_the_last_epoch_values_and_drops_step_values(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "epoch,step,train_loss_epoch,train_loss_step,valid_loss\n"
        "0,9,,3.0,\n"
        "0,19,,2.5,\n"
        "0,19,,,2.4\n"
        "0,19,2.7,,\n"
        "1,39,,1.5,\n"
        "1,39,,,1.6\n"
        "1,39,1.8,,\n",
        encoding="utf-8",
    )
    assert epoch_history(metrics) == [
        {"epoch": 0.0, "steps": 19.0, "train_loss": 2.7, "valid_loss": 2.4},
        {"epoch": 1.0, "steps": 39.0, "train_loss": 1.8, "valid_loss": 1.6},
    ]
    assert epoch_history(tmp_path / "absent.csv") == []


def test_bar_chart_scales_columns_in_eighths_between_low_and_high() -> None:
    assert bar_chart([0.0, 1.0, None], 0.0, 1.0, height=1) == ["▁█ "]
    assert bar_chart([0.0, 0.5, 1.0], 0.0, 1.0, height=2) == [" ▁█", "▁██"]


def test_the_metric_table_leaves_out_losses_that_repeat_bits_per_char() -> None:
    row = {"epoch": 0.0, "steps": 9.0, "valid_loss": 1.0, "valid_bpc": 1.4, "train_loss": 2.0, "lr": 0.1}
    history = [row]
    assert table_columns(history) == ["epoch", "steps", "lr", "train_loss", "valid_bpc"]


def made_run(name: str, status: str) -> RunDir:
    """A run directory with a checkpoint-sized file in it, marked `status`."""
    made = create_run(resolve({}, [], name="sparse_mlp"), name)
    made.checkpoint("last").write_bytes(b"\0" * 1024)
    made.update_info(status=status)
    return made


class Terminal(io.StringIO):
    """Standard input at a terminal, where the user typed these lines."""

    def isatty(self) -> bool:
        return True


def test_runs_remove_deletes_the_named_runs_and_the_failed_ones(capsys, monkeypatch) -> None:
    kept = made_run("kept", "finished")
    named = made_run("named", "finished")
    failed = made_run("broke", "failed")
    code, out, _ = cli(capsys, "runs", "remove", "named", "--failed", "--yes")
    assert code == 0
    assert out.splitlines() == ["removed named", "removed broke"]
    assert [run.name for run in list_runs()] == ["kept"]
    assert not named.path.exists() and not failed.path.exists() and kept.path.exists()
    assert [path.name for path in kept.path.parent.iterdir()] == ["kept"]
    code, out, _ = cli(capsys, "runs", "remove", "--failed", "--yes")
    assert (code, out) == (0, "no failed runs to remove\n")
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))  # asked, and declined
    code, out, _ = cli(capsys, "runs", "remove", "kept")
    assert code == 0 and "remove 1 run(s): kept?" in out and "nothing removed" in out
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, _ = cli(capsys, "runs", "remove", "kept")
    assert code == 0 and "removed kept" in out and list_runs() == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "name the runs to remove, or give --failed"),
        (["nowhere", "--yes"], "run 'nowhere' not found"),
        (
            ["busy", "--yes"],
            "run 'busy' is marked running (it may still be training); --force removes it anyway",
        ),
        (["done"], "not at a terminal to confirm removing done: add --yes"),
    ],
)
def test_runs_remove_refuses_in_one_line_and_removes_nothing(argv, message, capsys) -> None:
    made_run("busy", "running")
    made_run("done", "finished")
    code, out, err = cli(capsys, "runs", "remove", *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1
    assert [run.name for run in list_runs()] == ["busy", "done"]


def test_runs_remove_forces_a_run_marked_running_and_takes_a_broken_one(capsys) -> None:
    busy = made_run("busy", "running")
    broken = made_run("broken", "finished")
    (broken.path / INFO_FILE).write_text("{", encoding="utf-8")
    code, out, _ = cli(capsys, "runs", "remove", "busy", str(broken.path), "--force", "--yes")
    assert code == 0 and out.splitlines() == ["removed busy", "removed broken"]
    assert not busy.path.exists() and not broken.path.exists()


def test_a_run_being_removed_is_no_run_and_the_next_removal_clears_it(capsys) -> None:
    """A removal interrupted after its rename leaves a hidden directory: never listed, and deleted by the
    next removal in that folder."""
    left = made_run("left", "finished")
    hidden = left.path.with_name(".removing-left-0123abcd")
    left.path.rename(hidden)
    assert list_runs() == [] and scan_runs().skipped == []
    made_run("other", "finished")
    assert cli(capsys, "runs", "remove", "other", "--yes")[0] == 0
    assert list(hidden.parent.iterdir()) == []
