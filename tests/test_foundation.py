"""Class taxonomy, safe image I/O, checkpoints and the CLI shell."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nightseg import __version__
from nightseg.core import classes
from nightseg.core.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from nightseg.core.errors import UserError
from nightseg.core.io import read_image, read_label, write_json, write_png


def test_train_classes_match_cityscapes_table():
    assert classes.NUM_CLASSES == 19
    assert classes.CLASS_NAMES[0] == "road" and classes.CLASS_NAMES[18] == "bicycle"
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(256):
        assert classes.LABEL_ID_TO_TRAIN_ID[label_id] == expected.get(label_id, 255)
    assert list(classes.TRAIN_ID_TO_LABEL_ID) == sorted(expected)
    assert tuple(classes.PALETTE[13]) == (0, 0, 142)  # car


def test_label_id_round_trip_and_colorize():
    train = np.array([[0, 13, 255], [18, 10, 5]], dtype=np.uint8)
    label_ids = classes.train_ids_to_label_ids(train)
    assert label_ids.tolist() == [[7, 26, 0], [33, 23, 17]]
    back = classes.label_ids_to_train_ids(label_ids)
    assert back.tolist() == train.tolist()
    rgb = classes.colorize(train)
    assert rgb.shape == (2, 3, 3) and tuple(rgb[0, 2]) == (0, 0, 0) and tuple(rgb[0, 1]) == (0, 0, 142)


def test_class_sets():
    assert classes.STATIC_CLASSES == tuple(range(11))
    assert classes.DYNAMIC_CLASSES == tuple(range(11, 19))
    hard = classes.hard_classes()
    assert {0, 8, 10}.isdisjoint(hard) and len(hard) == 16
    assert classes.hard_classes(["car", 0]) == tuple(i for i in range(19) if i not in (0, 13))
    with pytest.raises(ValueError, match="unknown class 'lamp'"):
        classes.class_ids(["lamp"])


def test_read_image_converts_gray_rgba_and_16bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (3, 4, 3)
    assert (read_image(tmp_path / "g.png")[..., 2] == gray).all()
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]
    deep = np.full((2, 2), 65535, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert read_image(tmp_path / "d.png")[0, 0].tolist() == [255, 255, 255]


def test_corrupt_image_and_rgb_label_are_refused(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="broken.png: cannot decode"):
        read_image(bad)
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (128, 64, 128)
    Image.fromarray(rgb).save(tmp_path / "color.png")
    with pytest.raises(UserError, match="color.png: label map is a colour"):
        read_label(tmp_path / "color.png")
    with pytest.raises(UserError, match="missing.png: file not found"):
        read_label(tmp_path / "missing.png")


def test_write_png_is_atomic_and_round_trips(tmp_path):
    label = np.array([[0, 1], [255, 18]], dtype=np.uint8)
    out = write_png(tmp_path / "sub" / "l.png", label, palette=classes.PALETTE)
    assert read_label(out).tolist() == label.tolist()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["l.png"]  # no temp files left
    conf = np.array([[0, 65535]], dtype=np.uint16)
    write_png(tmp_path / "c.png", conf)
    assert np.asarray(Image.open(tmp_path / "c.png")).tolist() == [[0, 65535]]
    write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_checkpoint_round_trip_and_mismatch_errors(tmp_path):
    model = torch.nn.Conv2d(3, 19, 1)
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), {"model": {"name": "conv"}})
    tensors, meta = load_checkpoint(path)
    assert meta["model"] == {"name": "conv"} and meta["format"] == "nightseg-checkpoint"
    other = torch.nn.Conv2d(3, 19, 1)
    load_state_into(other, tensors, path)
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(UserError, match=r"m.safetensors: tensor weight has shape \(19, 3, 1, 1\), the model expects \(7, 3, 1, 1\)"):
        load_state_into(torch.nn.Conv2d(3, 7, 1), tensors, path)
    with pytest.raises(UserError, match="weights do not fit this architecture"):
        load_state_into(torch.nn.Sequential(torch.nn.Conv2d(3, 19, 1)), tensors, path)
    pth = tmp_path / "old.pth"
    pth.write_bytes(b"x")
    with pytest.raises(UserError, match="old.pth: expected a .safetensors checkpoint"):
        load_checkpoint(pth)
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(UserError, match="not a NightSeg checkpoint"):
        load_checkpoint(path)


def test_cli_version_help_and_unknown_command(run_cli, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("--version")
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"nightseg {__version__}"
    result = run_cli()
    assert result.code == 0 and "eval" in result.out
    with pytest.raises(SystemExit) as exc:
        run_cli("no-such-command")
    assert exc.value.code == 2


def test_list_images_names_a_missing_folder_and_a_file_given_as_folder(tmp_path):
    from nightseg.core.io import list_images

    write_png(tmp_path / "a" / "x.png", np.zeros((4, 4), np.uint8))
    assert [p.name for p in list_images(tmp_path / "a")] == ["x.png"]
    with pytest.raises(UserError, match="folder not found"):
        list_images(tmp_path / "missing")
    with pytest.raises(UserError, match="is a file, not a folder"):
        list_images(tmp_path / "a" / "x.png")
