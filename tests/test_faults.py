"""Faults during training and writing: disk full while a checkpoint is written, a NaN loss, a checkpoint copied
in part. Each leaves the previous checkpoint readable and says what happened in one line."""

from __future__ import annotations

import errno
import json
import re
import shutil

import pytest
import torch

from nightseg.core.checkpoint import load_checkpoint, save_checkpoint
from nightseg.core.errors import UserError
from test_engine import TinyDataset, same_tensors, tiny_recipe, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))


def nan_dataset(root, split, transform=None, **kw):
    """The engine tests' tiny dataset whose train samples turn into NaN pixels from the 7th one fetched on
    (batches of 2, no workers: the 4th training batch)."""
    return NanDataset(root, split, transform, **kw)


class NanDataset(TinyDataset):
    fetched = 0

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        if self.split == "train":
            NanDataset.fetched += 1
            if NanDataset.fetched >= 7:
                sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample


def _no_space(calls: list, fail_on: int):
    """Return a safetensors `save_file` that raises ENOSPC (naming the file it writes) on call `fail_on`."""
    from safetensors.torch import save_file

    def save(tensors, path, *args, **kw):
        calls.append(path)
        if len(calls) == fail_on:
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save_file(tensors, path, *args, **kw)

    return save


def test_disk_full_while_a_checkpoint_is_written_keeps_the_previous_one_and_the_run_resumes(tmp_path, monkeypatch):
    import nightseg.core.checkpoint as checkpoint
    from nightseg.core.config import config_from_dict
    from nightseg.engine import train

    recipe = tiny_recipe(max_steps=8, val_every=0, state_every=2)
    straight = tmp_path / "straight"
    train(config_from_dict(recipe, "tiny"), straight)

    run = tmp_path / "run"
    calls: list = []
    monkeypatch.setattr(checkpoint, "save_file", _no_space(calls, fail_on=3))  # exports at steps 2, 4, 6*, 8
    with pytest.raises(OSError) as info:
        train(config_from_dict(recipe, "tiny"), run)
    assert info.value.errno == errno.ENOSPC
    # the error names the user's checkpoint, not the hidden temporary file that was being written
    assert info.value.filename == str(run / "checkpoints" / "last.safetensors")
    tensors, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")  # whole, and matches its digest
    assert meta["step"] == 4 and all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left
    monkeypatch.undo()
    done = train(config_from_dict(recipe, "tiny"), run, resume=True)  # the space is back: resume
    assert done["finished"] and done["step"] == 8
    same_tensors(weights(straight), weights(run))


def test_disk_full_in_the_cli_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch, run_cli):
    import nightseg.core.checkpoint as checkpoint
    from test_engine import write_recipe

    config = write_recipe(tmp_path, tiny_recipe(max_steps=4, val_every=0, state_every=2))
    monkeypatch.setattr(checkpoint, "save_file", _no_space([], fail_on=2))
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "No space left on device" in result.err
    assert f"{tmp_path / 'run' / 'checkpoints' / 'last.safetensors'}: " in result.err and "/." not in result.err


def test_nan_loss_stops_with_the_step_and_the_term_and_keeps_the_last_good_checkpoint(tmp_path, run_cli):
    from test_engine import write_recipe

    recipe = tiny_recipe(max_steps=8, val_every=0, state_every=1)
    recipe["data"]["source"]["dataset"] = "test_faults:nan_dataset"
    config = write_recipe(tmp_path, recipe)
    run = tmp_path / "run"
    NanDataset.fetched = 0
    result = run_cli("train", "--config", config, "--out", run)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    found = re.search(r"training step (\d+): loss term 'ce_source' is nan; stopped before the optimizer step", result.err)
    assert found, result.err
    step = int(found.group(1))
    assert step == 4  # the first batch with NaN pixels
    tensors, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert meta["step"] == step - 1  # the checkpoint of the last good step, untouched
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert json.loads((run / "state" / "state.json").read_text())["step"] == step - 1


def test_check_finite_losses_names_the_first_bad_term():
    from nightseg.methods.base import check_finite_losses

    check_finite_losses(torch.tensor(1.0), {"a": torch.tensor(1.0)}, 3)  # finite: nothing happens
    with pytest.raises(UserError, match=r"^training step 7: loss term 'b' is inf;"):
        check_finite_losses(torch.tensor(float("inf")), {"a": torch.tensor(0.5), "b": torch.tensor(float("inf"))}, 7)
    with pytest.raises(UserError, match=r"^training step 2: the total loss is nan;"):
        check_finite_losses(torch.tensor(float("nan")), {"a": 1.0}, 2)


def test_checkpoint_copied_in_part_is_detected_by_its_digest(tmp_path):
    original = save_checkpoint(tmp_path / "a" / "m.safetensors", {"w": torch.arange(4096.0)}, {"model": {"name": "x"}})
    meta = json.loads(original.with_suffix(".json").read_text())
    assert meta["sha256"].startswith("sha256:") and len(meta["sha256"]) == 7 + 64
    assert torch.equal(load_checkpoint(original)[0]["w"], torch.arange(4096.0))

    copy = tmp_path / "b" / "m.safetensors"
    copy.parent.mkdir()
    shutil.copy(original.with_suffix(".json"), copy.with_suffix(".json"))
    data = original.read_bytes()
    for damaged in (data[: len(data) // 2],  # a copy cut short
                    data[:-100] + bytes(100)):  # same size, the tail zeroed (still a valid safetensors file)
        copy.write_bytes(damaged)
        with pytest.raises(UserError, match=r"m\.safetensors: contents do not match the sha256 digest in m\.json"):
            load_checkpoint(copy)

    # checkpoints written before digests were stored still load
    copy.write_bytes(data)
    del meta["sha256"]
    copy.with_suffix(".json").write_text(json.dumps(meta))
    assert torch.equal(load_checkpoint(copy)[0]["w"], torch.arange(4096.0))


def test_failed_checkpoint_write_leaves_the_previous_pair_matching(tmp_path, monkeypatch):
    """Disk full while the second file of a checkpoint is written: neither file is replaced."""
    import nightseg.core.checkpoint as checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(8)}, {"model": {"name": "x"}, "step": 1})

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.json, "dumps", full)  # the JSON write fails after the tensors were written
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": torch.ones(8)}, {"model": {"name": "x"}, "step": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.zeros(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
