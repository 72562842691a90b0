"""Checkpoint files written atomically: a reader (or a resume after a crash) never sees half a file.

Lightning writes checkpoints in place, so a run killed mid-save would leave a truncated `last.ckpt`, the very
file `--resume` needs. This plugin serialises to memory first and then renames into place.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from langinterp.paths import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves go through `paths.atomic_write`."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(Path(path), buffer.getvalue())
