"""Zero-DCE: official-weights parity, zero-reference losses by hand, `nightseg relight train|apply`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.errors import UserError
from nightseg.core.io import read_image, write_png
from nightseg.losses.zero_reference import (
    color_constancy_loss,
    exposure_control_loss,
    illumination_smoothness_loss,
    spatial_consistency_loss,
    zero_reference_loss,
)
from nightseg.models import DCENet, build_segmenter
from nightseg.models.relight import apply_curves, load_dce_weights, relight, save_dce_weights

NIGHT = "dark_zurich_pair/GP010375_frame_000036_rgb.png"
OFFICIAL = "zero_dce/Epoch99.pth"


def _independent_zero_dce(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Zero-DCE written from the paper/README with bare functional convs (no nightseg code)."""

    def conv(name, inp, act=True):
        out = F.conv2d(inp, state[f"{name}.weight"], state[f"{name}.bias"], stride=1, padding=1)
        return torch.relu(out) if act else out

    x1 = conv("e_conv1", x)
    x2 = conv("e_conv2", x1)
    x3 = conv("e_conv3", x2)
    x4 = conv("e_conv4", x3)
    x5 = conv("e_conv5", torch.cat([x3, x4], 1))
    x6 = conv("e_conv6", torch.cat([x2, x5], 1))
    curves = torch.tanh(conv("e_conv7", torch.cat([x1, x6], 1), act=False))
    out = x
    for n in range(8):
        a = curves[:, 3 * n : 3 * n + 3]
        out = out + a * (out**2 - out)
    return out


def test_official_weights_parity_on_real_night_crop(realdata):
    weights = realdata / OFFICIAL
    model = load_dce_weights(weights)
    assert sum(p.numel() for p in model.parameters()) == 79_416
    image = read_image(realdata / NIGHT)[400:528, 900:1092]  # a real 128x192 crop (street and shop lights)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    state = torch.load(weights, map_location="cpu", weights_only=True)
    with torch.no_grad():
        ours = model(x)
        reference = _independent_zero_dce(state, x)
    assert (ours - reference).abs().max().item() < 1e-5
    assert ours.mean() > x.mean() + 0.1  # the official network brightens a night image
    relit = relight(model, image)
    assert relit.shape == image.shape and relit.dtype == np.uint8
    expected = (reference.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.abs(relit.astype(int) - expected.astype(int)).max() <= 1


def test_safetensors_round_trip_and_wrong_files(realdata, tmp_path):
    model = load_dce_weights(realdata / OFFICIAL)
    path = save_dce_weights(model, tmp_path / "dce.safetensors")
    again = load_dce_weights(path)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))

    seg = build_segmenter("pspnet_tiny")
    save_checkpoint(tmp_path / "seg.safetensors", seg.state_dict(), {"model": seg.config})
    with pytest.raises(UserError, match=r"seg\.safetensors.*not Zero-DCE"):
        load_dce_weights(tmp_path / "seg.safetensors")
    small = DCENet(channels=16)
    save_checkpoint(tmp_path / "small.safetensors", small.state_dict(), {"model": model.config})
    with pytest.raises(UserError, match=r"small\.safetensors.*shape"):
        load_dce_weights(tmp_path / "small.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"junk\.pth"):
        load_dce_weights(tmp_path / "junk.pth")


def test_dce_net_shapes_and_gradients():
    model = DCENet(generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 32, 48)
    enhanced, curves = model.enhance(x)
    assert enhanced.shape == (2, 3, 32, 48) and curves.shape == (2, 24, 32, 48)
    assert curves.abs().max() <= 1
    loss, parts = zero_reference_loss(enhanced, x, curves)
    loss.backward()
    assert set(parts) == {"spa", "exp", "col", "tvA"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_initialisation_is_deterministic_by_seed():
    a = DCENet(generator=torch.Generator().manual_seed(3)).state_dict()
    b = DCENet(generator=torch.Generator().manual_seed(3)).state_dict()
    c = DCENet(generator=torch.Generator().manual_seed(4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["e_conv1.weight"], c["e_conv1.weight"])
    assert abs(float(a["e_conv3.weight"].std()) - 0.02) < 0.003


def test_apply_curves_by_hand():
    x = torch.full((1, 3, 2, 2), 0.5)
    one = torch.full((1, 3, 2, 2), -1.0)
    assert torch.allclose(apply_curves(x, one), torch.full_like(x, 0.75))  # 0.5 - (0.25 - 0.5)
    two = torch.cat([one, one], 1)
    assert torch.allclose(apply_curves(x, two), torch.full_like(x, 0.9375))  # 0.75 - (0.5625 - 0.75)
    assert torch.equal(apply_curves(x, torch.zeros(1, 24, 2, 2)), x)


def test_exposure_loss_by_hand():
    img = torch.zeros(1, 3, 16, 32)
    img[..., :16] = 0.5
    img[..., 16:] = 0.9
    assert exposure_control_loss(img).item() == pytest.approx((0.1 + 0.3) / 2, rel=1e-5)
    assert exposure_control_loss(torch.full((2, 3, 32, 32), 0.6)).item() == pytest.approx(0.0, abs=1e-6)


def test_color_loss_by_hand():
    img = torch.zeros(1, 3, 4, 4)
    img[:, 0], img[:, 1], img[:, 2] = 0.6, 0.4, 0.4
    assert color_constancy_loss(img).item() == pytest.approx(0.2**2 + 0.2**2 + 0.0, rel=1e-5)


def test_spatial_consistency_loss_by_hand():
    original = torch.zeros(1, 3, 8, 8)  # 2x2 regions of 4x4 pixels
    enhanced = torch.zeros(1, 3, 8, 8)
    enhanced[..., :4, :4] = 1.0  # region (0,0) bright: Y = [[1,0],[0,0]], I = 0
    # region (0,0): right 1, down 1; (0,1): left 1; (1,0): up 1; (1,1): 0  -> 4 / K=4
    assert spatial_consistency_loss(enhanced, original).item() == pytest.approx(1.0)
    # a uniform brightening keeps every contrast: no loss
    noise = torch.rand(1, 3, 8, 8)
    assert spatial_consistency_loss(noise + 0.3, noise).item() == pytest.approx(0.0, abs=1e-10)


def test_illumination_smoothness_loss_by_hand():
    rows, cols = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
    curves = torch.zeros(1, 24, 3, 3)
    curves[0, 0] = cols  # |grad_x| = 1, |grad_y| = 0  -> 1
    assert illumination_smoothness_loss(curves).item() == pytest.approx(1 / 8)
    curves[0, 5] = rows + cols  # (1 + 1)^2 = 4
    assert illumination_smoothness_loss(curves).item() == pytest.approx(5 / 8)


def test_total_uses_paper_weights():
    torch.manual_seed(0)
    x, y, a = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.rand(1, 24, 16, 16)
    total, parts = zero_reference_loss(y, x, a)
    expected = parts["spa"] + parts["exp"] + 0.5 * parts["col"] + 20 * parts["tvA"]
    assert total.item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ CLI


@pytest.fixture
def night_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "night"
    for i, (h, w) in enumerate([(40, 56), (48, 40), (36, 36)]):
        write_png(
            folder / ("sub" if i == 2 else "") / f"n{i}.png", (rng.random((h, w, 3)) * 60).astype(np.uint8)
        )
    return folder


def test_cli_train_deterministic_and_resume(night_folder, tmp_path, run_cli):
    common = ("--images", night_folder, "--size", 32, "--batch-size", 2, "--seed", 5)
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    assert run_cli("relight", "train", *common, "--epochs", 2, "--out", a).code == 0
    assert run_cli("relight", "train", *common, "--epochs", 2, "--out", b).code == 0
    assert run_cli("relight", "train", *common, "--epochs", 1, "--out", c).code == 0
    result = run_cli("relight", "train", *common, "--epochs", 2, "--out", c, "--resume")
    assert result.code == 0, result.err
    wa, wb, wc = (load_file(str(p)) for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    assert all(torch.equal(wa[k], wc[k]) for k in wa)  # resumed run == uninterrupted run
    init = DCENet(generator=torch.Generator().manual_seed(5)).state_dict()
    assert not torch.equal(wa["e_conv7.weight"], init["e_conv7.weight"])  # it did train
    assert load_dce_weights(a).config["name"] == "zero_dce"

    wrong = run_cli("relight", "train", *common[:-1], 6, "--epochs", 3, "--out", c, "--resume")
    assert wrong.code == 2 and str(tmp_path / "c.train" / "state.json") in wrong.err and "seed" in wrong.err


def test_cli_train_errors(tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("relight", "train", "--images", empty, "--out", tmp_path / "w.safetensors")
    assert result.code == 2 and "empty" in result.err
    result = run_cli(
        "relight", "train", "--images", tmp_path / "missing", "--out", tmp_path / "w.safetensors"
    )
    assert result.code == 2 and "missing" in result.err


def test_cli_apply_files_folders_globs(night_folder, tmp_path, run_cli):
    weights = save_dce_weights(DCENet(generator=torch.Generator().manual_seed(1)), tmp_path / "w.safetensors")
    out = tmp_path / "out"
    result = run_cli("relight", "apply", night_folder, "--out", out, "--weights", weights)
    assert result.code == 0, result.err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "n0.png",
        "n1.png",
        "sub/n2.png",
    ]
    model = load_dce_weights(weights)
    expected = relight(model, read_image(night_folder / "n0.png"))
    assert np.array_equal(read_image(out / "n0.png"), expected)

    out2 = tmp_path / "out2"
    result = run_cli(
        "relight",
        "apply",
        str(night_folder / "n*.png"),
        night_folder / "sub" / "n2.png",
        "--out",
        out2,
        "--weights",
        weights,
    )
    assert result.code == 0, result.err
    assert sorted(p.name for p in out2.glob("*.png")) == ["n0.png", "n1.png", "n2.png"]


def test_cli_apply_errors(night_folder, tmp_path, run_cli, monkeypatch):
    monkeypatch.delenv("NIGHTSEG_RELIGHT_WEIGHTS", raising=False)
    result = run_cli("relight", "apply", tmp_path / "nope.png", "--out", tmp_path / "o")
    assert result.code == 2 and "nope.png" in result.err
    result = run_cli("relight", "apply", str(tmp_path / "*.jpg"), "--out", tmp_path / "o")
    assert result.code == 2 and "*.jpg" in result.err
    result = run_cli("relight", "apply", night_folder, "--out", tmp_path / "o")
    assert result.code == 2 and "--weights" in result.err
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    result = run_cli("relight", "apply", night_folder, "--out", tmp_path / "o", "--weights", bad)
    assert result.code == 2 and "bad.pth" in result.err
    clash = tmp_path / "other"
    write_png(clash / "n0.png", np.zeros((8, 8, 3), np.uint8))
    weights = save_dce_weights(DCENet(), tmp_path / "w.safetensors")
    result = run_cli(
        "relight",
        "apply",
        night_folder / "n0.png",
        clash / "n0.png",
        "--out",
        tmp_path / "o",
        "--weights",
        weights,
    )
    assert result.code == 2 and "n0.png" in result.err and "overwrite" in result.err


def test_official_weights_are_downloaded_once_checked_and_cached(realdata, tmp_path, night_folder, run_cli,
                                                                 monkeypatch):
    """`--weights official` fetches Epoch99.pth through torch.hub (mocked here: no network in tests)."""
    import hashlib
    import shutil

    from nightseg.models import relight as zero_dce

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        shutil.copyfile(realdata / OFFICIAL, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    out = tmp_path / "out"
    assert run_cli("relight", "apply", night_folder / "n0.png", "--out", out, "--weights", "official").code == 0
    assert run_cli("relight", "apply", night_folder / "n1.png", "--out", out, "--weights", "official").code == 0
    # one download, of the pinned official file, verified against the SHA-256 of the real Epoch99.pth
    assert len(calls) == 1 and calls[0][0].endswith("/Zero-DCE_code/snapshots/Epoch99.pth")
    assert calls[0][1] == hashlib.sha256((realdata / OFFICIAL).read_bytes()).hexdigest()
    cached = tmp_path / "hub" / "checkpoints" / "zero_dce_Epoch99.pth"
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]
    expected = relight(load_dce_weights(realdata / OFFICIAL), read_image(night_folder / "n0.png"))
    assert np.array_equal(read_image(out / "n0.png"), expected)
    assert zero_dce.load_dce_weights("official").e_conv1.weight.equal(load_dce_weights(cached).e_conv1.weight)


def test_official_weights_offline_gives_a_clear_error(tmp_path, night_folder, run_cli, monkeypatch):
    import urllib.error

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = run_cli("relight", "apply", night_folder, "--out", tmp_path / "o", "--weights", "official")
    assert result.code == 2 and "Traceback" not in result.err
    assert "github.com/Li-Chongyi/Zero-DCE" in result.err and "by hand" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not any((tmp_path / "hub" / "checkpoints").iterdir())  # no partial file left
    with pytest.raises(UserError, match="could not download"):
        load_dce_weights("official")
