"""What a new user meets: predict says when it relights and warns on single-channel inputs, one-line errors for a
random .pth, unwritable or misplaced outputs, bad images in a folder and misspelt config names, clear
eval/evaluate help, and a resumed `synth` that says it resumes."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from nightseg.core.io import write_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Said(logging.Handler):
    """Collects the messages of the ``nightseg`` logger (attached to it directly, so that the root logger's
    configuration left by other tests does not matter)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def said(monkeypatch):
    logger = logging.getLogger("nightseg")
    handler = Said()
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _photo(path, seed=0):
    rng = np.random.default_rng(seed)
    return write_png(path, rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))


def _bundled_checkpoint(tiny_checkpoint, tmp_path):
    from nightseg.core.checkpoint import load_checkpoint, save_checkpoint
    from nightseg.models.relight import DCENet

    tensors, meta = load_checkpoint(tiny_checkpoint)
    dce = DCENet(generator=torch.Generator().manual_seed(1))
    path = tmp_path / "ulca.safetensors"
    save_checkpoint(path, {**tensors, **{f"relight.{k}": v for k, v in dce.state_dict().items()}},
                    {"model": {**meta["model"], "relight": dce.config}})
    return path


def test_predict_says_it_relights_and_warns_on_single_channel_inputs(tiny_checkpoint, tmp_path, run_cli, said):
    inputs = tmp_path / "in"
    _photo(inputs / "photo.png")
    write_png(inputs / "label_map.png", np.full((32, 48), 7, dtype=np.uint8))  # a label map given by mistake
    ckpt = _bundled_checkpoint(tiny_checkpoint, tmp_path)
    result = run_cli("predict", ckpt, inputs, "--out", tmp_path / "pred", "--workers", "1")
    assert result.code == 0, result.err
    assert any("relighting every input with Zero-DCE" in m for m in said.messages)
    warned = [m for m in said.messages if "single-channel" in m]
    assert len(warned) == 1 and "label_map.png" in warned[0] and "photo.png" not in warned[0]
    assert "1 single-channel input(s) read as gray RGB" in result.out
    # without a bundled net, or with --no-relight, nothing is said about relighting
    said.messages.clear()
    assert run_cli("predict", ckpt, inputs / "photo.png", "--out", tmp_path / "p2", "--no-relight").code == 0
    assert not any("relighting" in m for m in said.messages)


def test_read_image_with_info_reports_the_stored_mode(tmp_path):
    from PIL import Image

    from nightseg.core.io import read_image_with_info

    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(gray)
    array, mode = read_image_with_info(gray)
    assert mode == "L" and array.shape == (3, 4, 3) and np.array_equal(array[..., 0], array[..., 2])
    assert read_image_with_info(_photo(tmp_path / "rgb.png"))[1] == "RGB"


def test_random_pth_for_relight_apply_is_one_line_without_pickle_advice(tmp_path, run_cli):
    import datetime

    image = _photo(tmp_path / "x.png")
    cases = {"object.pth": lambda p: p.write_bytes(pickle.dumps({"when": datetime.datetime(2020, 1, 1)})),
             "random.pth": lambda p: p.write_bytes(os.urandom(300)),
             "list.pth": lambda p: torch.save([torch.zeros(2)], p)}
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        result = run_cli("relight", "apply", image, "--out", tmp_path / "out", "--weights", path)
        assert result.code == 2, name
        assert result.err.count("\n") == 1 and result.err.startswith(f"error: {path}:"), result.err
        assert "weights_only=False" not in result.err and "Traceback" not in result.err


def test_unwritable_or_misplaced_outputs_fail_before_the_work_naming_the_users_path(tiny_checkpoint, tmp_path,
                                                                                     run_cli, monkeypatch):
    import nightseg.commands.predict as predict_command

    image = _photo(tmp_path / "x.png")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    loaded = []
    monkeypatch.setattr(predict_command, "predictor_from_args", lambda args: loaded.append(1))
    result = run_cli("predict", tiny_checkpoint, image, "--out", a_file)
    assert result.code == 2 and f"--out {a_file}: is an existing file, not a folder" in result.err
    assert "File exists" not in result.err and not loaded  # refused before the model loaded
    # a folder that cannot be written (simulated, as the tests may run as root: the probe file cannot be created)
    import tempfile
    import types

    import nightseg.core.io as io

    def denied(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io, "tempfile", types.SimpleNamespace(TemporaryFile=denied, mkstemp=tempfile.mkstemp))
    locked = tmp_path / "locked"
    for args in (("predict", tiny_checkpoint, image, "--out", locked),
                 ("relight", "apply", image, "--out", locked, "--weights", tmp_path / "none.safetensors"),
                 ("export", tiny_checkpoint, "--out", locked / "m.onnx"),
                 ("submit", "cityscapes", tmp_path, "--out", locked / "s.zip", "--root", tmp_path)):
        result = run_cli(*args)
        assert result.code == 2 and "Permission denied" in result.err, (args, result.err)
        assert str(locked) in result.err and "/." not in result.err, result.err  # no hidden temporary file
        assert not loaded


def test_atomic_write_errors_name_the_users_file_not_the_temporary_one(tmp_path, monkeypatch):
    import nightseg.core.io as io

    target = tmp_path / "out" / "map.png"

    def full(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(OSError) as info:
        io.write_png(target, np.zeros((4, 4), dtype=np.uint8))
    assert info.value.filename == str(target) and info.value.errno == 28
    assert list((tmp_path / "out").iterdir()) == []  # the temporary file is gone


def test_bad_image_in_a_folder_mentions_skip_bad(tiny_checkpoint, tmp_path, run_cli):
    inputs = tmp_path / "in"
    _photo(inputs / "a.png")
    (inputs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run_cli("predict", tiny_checkpoint, inputs, "--out", tmp_path / "pred", "--workers", "1")
    assert result.code == 2 and "b.png" in result.err and "--skip-bad" in result.err
    assert result.err.count("\n") == 1


def test_misspelt_config_is_reported_as_typed_with_the_nearest_names(tmp_path, run_cli, monkeypatch):
    from nightseg.core.config import load_config
    from nightseg.core.errors import UserError

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "supervised_cityscapes.yaml").write_text("method: {name: supervised}\n")
    link = tmp_path / "linked"
    link.symlink_to(folder)  # as the repository's configs/ links to the packaged recipes
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        load_config("linked/supervised_cityscapse.yaml")
    message = str(info.value)
    assert message.startswith("linked/supervised_cityscapse.yaml: config file not found")
    assert "did you mean linked/supervised_cityscapes.yaml?" in message and str(folder) not in message


def test_eval_and_evaluate_help_say_how_they_differ(run_cli):
    from nightseg.cli import COMMANDS

    assert "already-written prediction PNGs" in COMMANDS["eval"][1] and "no model" in COMMANDS["eval"][1]
    assert COMMANDS["evaluate"][1].startswith("run a checkpoint over a labelled dataset split")
    with pytest.raises(SystemExit):
        run_cli("evaluate", "--help")


def test_resumed_synth_says_so_and_its_bar_starts_at_the_done_count(tmp_path, said, monkeypatch):
    import nightseg.synthetic.generator as generator

    counts = {"train": 2, "val": 1, "pairs": 1, "night_val": 1, "night_train": 1, "nightcity_val": 1}
    out = tmp_path / "synth"
    generator.generate(out, preset="tiny", counts=counts, progress=False)
    victim = next((out / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))
    victim.unlink()  # as if the run had been killed before this scene
    bars = []
    real_tqdm = generator.tqdm
    monkeypatch.setattr(generator, "tqdm", lambda *a, **kw: bars.append(kw) or real_tqdm(*a, **kw))
    generator.generate(out, preset="tiny", counts=counts, progress=False)
    assert any("resuming: 6 of 7 scenes already written" in m for m in said.messages), said.messages
    assert bars[-1]["initial"] == 6 and bars[-1]["total"] == 7 and victim.is_file()
    said.messages.clear()
    generator.generate(out, preset="tiny", counts=counts, progress=False)
    assert any("already complete (7 scenes)" in m for m in said.messages)
