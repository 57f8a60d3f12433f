"""Resumable training state in safetensors + JSON, and the exported model checkpoints of a run.

Two kinds of files come out of ``nightseg train``:

* **Model checkpoints** ``RUN_DIR/checkpoints/{last,best}.safetensors`` (+ ``.json``): the segmenter's
  weights with ``{"model": segmenter.config, "recipe", "config", "step", "metrics"}`` metadata, written
  through `nightseg.core.checkpoint.save_checkpoint` (atomic). `nightseg eval`/`predict` load them.
* **Training state** ``RUN_DIR/state/``: everything Lightning needs to continue a run exactly (module
  weights incl. frozen parts, optimizer and LR-scheduler state, loop counters, callback state, the
  AMP grad-scaler). `SafeCheckpointIO` is a Lightning ``CheckpointIO`` plugin that stores Lightning's
  checkpoint dict in the training-state format of `nightseg.core.training_state` (one safetensors file
  with every tensor plus ``state.json`` with the rest of the tree; nothing pickled, written atomically).

The RNG is not part of the state on purpose: the engine re-seeds every training step from
``(seed, step, rank)`` and every data sample from ``(seed, stream, position)`` (see `nightseg.core.seeding`),
so a resumed run draws exactly the numbers the uninterrupted run draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from nightseg.core.training_state import STATE_FILE, load_state, save_state

__all__ = ["SafeCheckpointIO"]


class SafeCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` that stores checkpoints with `save_state`/`load_state` (no pickle).

    The `path` Lightning passes is the state folder's ``state.json`` (or the folder itself).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        save_state(checkpoint, path.parent if path.suffix == ".json" else path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_state(path)

    def remove_checkpoint(self, path: Any) -> None:
        path = Path(path)
        folder = path.parent if path.suffix == ".json" else path
        (folder / STATE_FILE).unlink(missing_ok=True)
        for old in folder.glob("tensors-*.safetensors"):
            old.unlink(missing_ok=True)
