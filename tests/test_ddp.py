"""DDP on 2 CPU processes (gloo), through the real command: Lightning re-launches it as a child process."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import train_with_two_processes

from langinterp.callbacks import weights_digest
from langinterp.runs import list_runs, load_checkpoint


def test_two_cpu_processes_share_one_run(tmp_path: Path, langinterp_home: Path) -> None:
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
        f'[data]\nbooks = ["{text}"]\ncontext = 4\n[model]\nhidden = {{ width = 8 }}\n'
        "[trainer]\nmax_epochs = 1\nbatch_size = 64\nsamples = 1\nsample_chars = 10\n"
    )
    audit = tmp_path / "audit"
    done = train_with_two_processes(recipe, audit, tmp_path)

    ranks = [json.loads((audit / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["batches"] == ranks[1]["batches"] > 0
    assert ranks[0]["batches_sha256"] != ranks[1]["batches_sha256"]  # each rank trained on its own shard
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # gradients were averaged

    runs = list_runs()
    assert len(runs) == 1  # the child did not create a run of its own
    run = runs[0]
    info = run.info()
    assert (info.status, info.epochs) == ("finished", 1)
    assert info.steps == ranks[0]["batches"]
    assert info.extra["final"]["chars_per_s"] > 0
    saved = load_checkpoint(run.checkpoint("last"))
    assert weights_digest(saved.state_dict) == ranks[0]["weights_sha256"]
    assert "--- epoch 1, sample 1" in run.samples_path.read_text()
    assert done.stdout.count(f"run {run.name}:") == 1  # only rank 0 reports
