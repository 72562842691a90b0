"""DDP on 2 CPU processes (gloo), through the real command: Lightning re-launches it as a child process.

For the MLP (one prediction per window) and Mamba (a prediction at every position of a sequence).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_training_state, train_with_two_processes, two_process_command

from langinterp.callbacks import weights_digest
from langinterp.data import WindowDataset, build_splits, dataset_kind
from langinterp.models import build_model
from langinterp.recipe import load_recipe
from langinterp.runs import find_run, list_runs, load_checkpoint
from langinterp.training import INTERRUPT_ENV


@pytest.mark.parametrize(
    ("family", "data", "model", "batch"),
    [
        ("mlp", "context = 4", "hidden = { width = 8 }", 64),
        (
            "mamba",
            'kind = "sequence"\ncontext = 8',
            'type = "mamba"\nd_model = 8\nlayers = 1\nd_state = 4',
            32,
        ),
    ],
)
def test_two_cpu_processes_share_one_run(
    family: str, data: str, model: str, batch: int, tmp_path: Path, langinterp_home: Path
) -> None:
    text = tmp_path / "text.txt"
    generator = torch.Generator().manual_seed(1)
    text.write_text(
        " ".join(
            ["ab", "cd", "efg", "hij", "kl"][i]
            for i in torch.randint(5, (400,), generator=generator).tolist()
        )
    )
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(
        f'[data]\nbooks = ["{text}"]\n{data}\n[model]\n{model}\n'
        f"[trainer]\nmax_epochs = 1\nbatch_size = {batch}\nsamples = 1\nsample_chars = 10\n"
    )
    audit = tmp_path / "audit"
    done = train_with_two_processes(recipe, audit, tmp_path)

    # Each rank gets half of the training windows (the sampler pads to equal halves), not all of them.
    loaded = load_recipe(recipe)
    kind = dataset_kind(loaded.data["kind"], build_model(loaded).reads)
    windows = len(WindowDataset(build_splits(loaded.data).train, loaded.data["context"], kind))
    per_rank = math.ceil(math.ceil(windows / 2) / batch)
    assert per_rank < math.ceil(windows / batch)

    ranks = [json.loads((audit / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["batches"] == ranks[1]["batches"] == per_rank
    assert ranks[0]["batches_sha256"] != ranks[1]["batches_sha256"]  # each rank trained on its own shard
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # gradients were averaged

    runs = list_runs()
    assert len(runs) == 1  # the child did not create a run of its own
    run = runs[0]
    info = run.info()
    assert (info.status, info.epochs, info.model_type) == ("finished", 1, family)
    assert info.steps == per_rank
    assert info.extra["final"]["chars_per_s"] > 0
    saved = load_checkpoint(run.checkpoint("last"))
    assert weights_digest(saved.state_dict) == ranks[0]["weights_sha256"]
    assert "--- epoch 1, sample 1" in run.samples_path.read_text()
    assert done.stdout.count(f"run {run.name}:") == 1  # only rank 0 reports


def ddp_recipe(tmp_path: Path, epochs: int = 2) -> Path:
    text = tmp_path / "text.txt"
    generator = torch.Generator().manual_seed(2)
    words = ["ab", "cd", "efg", "hij", "kl"]
    text.write_text(" ".join(words[i] for i in torch.randint(5, (300,), generator=generator).tolist()))
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(
        f'[data]\nbooks = ["{text}"]\ncontext = 4\n[model]\nhidden = {{ width = 8 }}\n'
        f"[trainer]\nmax_epochs = {epochs}\nbatch_size = 32\nsamples = 0\n"
    )
    return recipe


def test_a_resumed_ddp_run_trains_as_an_uninterrupted_one(tmp_path: Path, langinterp_home: Path) -> None:
    recipe, audit = ddp_recipe(tmp_path), tmp_path / "audit"
    train_with_two_processes(recipe, audit, tmp_path, "--run-name", "whole")
    # From an epoch boundary.
    train_with_two_processes(recipe, audit, tmp_path, "--run-name", "halves", "trainer.max_epochs=1")
    train_with_two_processes(None, audit, tmp_path, "--resume", "halves", "trainer.max_epochs=2")
    # From the middle of an epoch: every rank stops as step 5 is about to start, then each skips its own
    # five batches of that epoch on resume.
    stop = {INTERRUPT_ENV: "5"}
    train_with_two_processes(recipe, audit, tmp_path, "--run-name", "cut", environment=stop, returncode=130)
    assert load_checkpoint(find_run("cut").checkpoint("last")).global_step == 5
    train_with_two_processes(None, audit, tmp_path, "--resume", "cut")
    whole = find_run("whole")
    for name in ("halves", "cut"):
        run = find_run(name)
        assert run.info().epochs == 2 and run.info().steps == whole.info().steps
        assert_same_training_state(whole.checkpoint("last"), run.checkpoint("last"))


def test_a_real_ctrl_c_stops_every_ddp_process_at_the_same_batch(
    tmp_path: Path, langinterp_home: Path
) -> None:
    # A terminal's Ctrl-C reaches every process of the job. Each rank turns it into a request that the ranks
    # agree on, so all stop before the same batch, save one consistent checkpoint, and the resumed run ends
    # where an uninterrupted one does. (Stopping wherever each process happened to be could leave one rank
    # waiting in a collective that the other never joins.)
    recipe, audit = ddp_recipe(tmp_path, epochs=8), tmp_path / "audit"
    train_with_two_processes(recipe, audit, tmp_path, "--run-name", "whole")
    command, env = two_process_command(recipe, audit, "--run-name", "cut")
    job = subprocess.Popen(
        command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    last = langinterp_home / "runs" / "cut" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err[-3000:]
    stopped = load_checkpoint(find_run("cut").checkpoint("last")).global_step
    assert 0 < stopped < find_run("whole").info().steps
    train_with_two_processes(None, audit, tmp_path, "--resume", "cut")
    assert_same_training_state(find_run("whole").checkpoint("last"), find_run("cut").checkpoint("last"))
