"""`nightseg predict` (images, folders, globs, videos, resume, bad inputs) and `nightseg evaluate`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.classes import PALETTE
from nightseg.core.io import read_image, read_label, write_png
from nightseg.models import build_segmenter

H, W = 40, 64


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def _image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    write_png(folder / "a.png", _image(0))
    write_png(folder / "b.png", _image(1))
    write_png(folder / "sub" / "c.png", _image(2))
    return folder


def test_predict_folder_writes_all_maps(ckpt, inputs, tmp_path, run_cli):
    out = tmp_path / "out"
    r = run_cli("predict", ckpt, inputs, "--out", out, "--device", "cpu", "--confidence", "--batch-size", "2")
    assert r.code == 0, r.err
    assert "predicted 3 image(s)" in r.out
    for rel in ("a", "b", "sub/c"):
        labels = read_label(out / f"{rel}_labelTrainIds.png")
        assert labels.shape == (H, W) and labels.max() < 19
        color = read_image(out / f"{rel}_color.png")
        np.testing.assert_array_equal(color, PALETTE[labels])
        overlay = read_image(out / f"{rel}_overlay.png")
        image = read_image(inputs / f"{rel}.png")
        np.testing.assert_allclose(overlay.astype(int), (image.astype(int) + color) / 2, atol=1.01)
        conf = np.asarray(__import__("PIL.Image").Image.open(out / f"{rel}_confidence.png"))
        assert conf.dtype == np.uint16 and conf.min() >= 65535 // 19
        invalid = read_label(out / f"{rel}_labelTrainIds_invalid.png")
        np.testing.assert_array_equal(invalid == 255, conf < 32768)  # default threshold 0.5
        np.testing.assert_array_equal(invalid[invalid != 255], labels[invalid != 255])
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_predict_resumes_without_redoing(ckpt, inputs, tmp_path, run_cli):
    out = tmp_path / "out"
    assert run_cli("predict", ckpt, inputs, "--out", out, "--outputs", "labels").code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "b_labelTrainIds.png").unlink()  # as if the run had been killed before writing b
    r = run_cli("predict", ckpt, inputs, "--out", out, "--outputs", "labels")
    assert r.code == 0 and "predicted 1 image(s)" in r.out and "2 already done" in r.out
    for p, mtime in before.items():
        if p.name != "b_labelTrainIds.png":
            assert p.stat().st_mtime_ns == mtime  # untouched
    assert (out / "b_labelTrainIds.png").is_file()
    r = run_cli("predict", ckpt, str(inputs / "*.png"), "--out", tmp_path / "glob", "--outputs", "labels,color")
    assert r.code == 0 and sorted(p.name for p in (tmp_path / "glob").iterdir()) == [
        "a_color.png", "a_labelTrainIds.png", "b_color.png", "b_labelTrainIds.png"]


def test_predict_bad_inputs(ckpt, inputs, tmp_path, run_cli):
    bad = inputs / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = run_cli("predict", ckpt, inputs, "--out", tmp_path / "o1")
    assert r.code == 2 and "broken.png" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli("predict", ckpt, inputs, "--out", tmp_path / "o2", "--skip-bad", "--outputs", "labels")
    assert r.code == 0 and "1 unreadable input(s) skipped" in r.out
    assert len(list((tmp_path / "o2").rglob("*_labelTrainIds.png"))) == 3
    r = run_cli("predict", ckpt, tmp_path / "missing.png", "--out", tmp_path / "o3")
    assert r.code == 2 and "missing.png" in r.err
    r = run_cli("predict", ckpt, inputs, "--out", tmp_path / "o4", "--outputs", "labels,heatmap")
    assert r.code == 2 and "heatmap" in r.err


def test_predict_rejects_mismatched_checkpoint(ckpt, inputs, tmp_path, run_cli):
    five = build_segmenter("pspnet_tiny", num_classes=5)
    wrong = tmp_path / "five.safetensors"
    save_checkpoint(wrong, five.state_dict(), {"model": {"name": "pspnet_tiny", "num_classes": 19}})
    r = run_cli("predict", wrong, inputs, "--out", tmp_path / "o")
    assert r.code == 2 and "five.safetensors" in r.err and "class count" in r.err
    arch = tmp_path / "arch.safetensors"
    save_checkpoint(arch, five.state_dict(), {"model": {"name": "pspnet_r18", "num_classes": 5}})
    r = run_cli("predict", arch, inputs, "--out", tmp_path / "o")
    assert r.code == 2 and "arch.safetensors" in r.err and "architecture" in r.err


def test_predict_sliding_tta_options_match_the_api(ckpt, inputs, tmp_path, run_cli):
    from nightseg.inference import TTA, Predictor, SlidingWindow

    out = tmp_path / "out"
    r = run_cli("predict", ckpt, inputs / "a.png", "--out", out, "--outputs", "labels", "--sliding",
                "--window", "32x48", "--stride", "16x24", "--blend", "uniform", "--tta", "flip")
    assert r.code == 0, r.err
    seg = Predictor.from_checkpoint(ckpt, sliding=SlidingWindow((32, 48), (16, 24), "uniform"), tta=TTA(True))
    np.testing.assert_array_equal(read_label(out / "a_labelTrainIds.png"), seg.predict(inputs / "a.png").labels)
    r = run_cli("predict", ckpt, inputs, "--out", out, "--window", "32")
    assert r.code == 2 and "--sliding" in r.err


def _video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    for i in range(frames):
        writer.write(_image(i % 4)[..., ::-1].copy())
    writer.release()
    return path


def test_predict_video_with_overlay_and_resume(ckpt, tmp_path, run_cli):
    video = _video(tmp_path / "drive.mp4", 7)
    out = tmp_path / "out"
    r = run_cli("predict", ckpt, video, "--out", out, "--video-overlay", "--batch-size", "4")
    assert r.code == 0, r.err
    assert "7 video frame(s)" in r.out
    frames = sorted((out / "drive").glob("*_labelTrainIds.png"))
    assert [p.name for p in frames][:2] == ["drive_000000_labelTrainIds.png", "drive_000001_labelTrainIds.png"]
    assert len(frames) == 7
    cap = cv2.VideoCapture(str(out / "drive_overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == W
    cap.release()
    # finished: skipped entirely
    assert "1 already done" in run_cli("predict", ckpt, video, "--out", out, "--video-overlay").out
    # interrupted before the video was finished, 3 frames missing: only those are recomputed
    (out / "drive_overlay.mp4").unlink()
    for p in frames[4:]:
        p.unlink()
    kept = frames[0].stat().st_mtime_ns
    r = run_cli("predict", ckpt, video, "--out", out, "--video-overlay", "--batch-size", "4")
    assert r.code == 0 and "4 already done" in r.out
    assert (out / "drive_overlay.mp4").is_file() and frames[0].stat().st_mtime_ns == kept
    assert all(p.is_file() for p in frames)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(256))
    r = run_cli("predict", ckpt, bad, "--out", out)
    assert r.code == 2 and "broken.mp4" in r.err


# --------------------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def dark_zurich(synthetic_set) -> Path:
    counts = {"train": 0, "val": 0, "pairs": 0, "night_val": 3, "night_train": 0, "nightcity_val": 0}
    return synthetic_set(counts) / "dark_zurich"


def test_evaluate_report_agrees_with_eval_of_predicted_files(ckpt, dark_zurich, tmp_path, run_cli):
    out = tmp_path / "report"
    r = run_cli("evaluate", ckpt, "--dataset", "dark_zurich", "--root", dark_zurich, "--out", out, "--device", "cpu")
    assert r.code == 0, r.err
    assert "mUIoU@0.5" in r.out
    results = json.loads((out / "report.json").read_text())
    for name in ("report.md", "per_class_iou.png", "exposure.png", "confusion.png"):
        assert (out / name).stat().st_size > 500
    assert results["num_images"] == 3 and len(results["per_class"]) == 19
    assert len(results["exposure"]["bins"]) == 10 and len(results["confusion_matrix"]) == 19
    unc = results["uncertainty"]
    assert unc["threshold"] == 0.5 and 0 <= unc["mUIoU"] <= 1 and 0 <= unc["average_mUIoU"] <= 1
    assert "mUIoU" in (out / "report.md").read_text()
    # the same model's files, scored by `nightseg eval`, give the same numbers
    images = dark_zurich / "rgb_anon" / "val" / "night"
    pred = tmp_path / "pred"
    assert run_cli("predict", ckpt, images, "--out", pred, "--outputs", "labels").code == 0
    gt = dark_zurich / "gt" / "val" / "night"
    folder = tmp_path / "folder.json"
    r = run_cli("eval", "--pred", pred, "--gt", gt, "--images", images, "--json", folder)
    assert r.code == 0, r.err
    ref = json.loads(folder.read_text())
    assert results["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-12)
    valid = tmp_path / "valid.json"
    assert run_cli("eval", "--pred", pred, "--gt", gt, "--images", images, "--invalid", gt, "--json", valid).code == 0
    assert unc["mIoU_valid"] == pytest.approx(json.loads(valid.read_text())["mIoU"], abs=1e-12)
    # mEF1 leaves invalid pixels out (one definition with training validation: tests/test_one_mef1.py)
    assert results["exposure"]["mEF1"] == pytest.approx(json.loads(valid.read_text())["exposure"]["mEF1"], abs=1e-12)


def test_evaluate_errors(ckpt, dark_zurich, tmp_path, run_cli):
    r = run_cli("evaluate", ckpt, "--dataset", "dark_zurich", "--root", tmp_path / "nowhere")
    assert r.code == 2 and "nowhere" in r.err
    r = run_cli("evaluate", ckpt, "--dataset", "darkzurich", "--root", dark_zurich)
    assert r.code == 2 and "darkzurich" in r.err
    five = build_segmenter("pspnet_tiny", num_classes=5)
    path = tmp_path / "five.safetensors"
    save_checkpoint(path, five.state_dict(), {"model": five.config})
    r = run_cli("evaluate", path, "--dataset", "dark_zurich", "--root", dark_zurich, "--out", tmp_path / "r")
    assert r.code == 2 and "5 classes" in r.err


def test_real_frame_figure_script(ckpt, realdata, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_frame_figure", Path(__file__).parents[1] / "bench" / "real_frame_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "figure.png"
    assert module.main([str(ckpt), "--out", str(out), "--size", "54x96"]) == 0
    with __import__("PIL.Image").Image.open(out) as img:
        assert img.width > 3 * img.height / 2 and img.mode in ("RGBA", "RGB")


def test_save_figure_writes_png_atomically_and_releases_pyplot_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nightseg.evaluation.report import save_figure

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "deep" / "plot.png", dpi=50)
    assert out == tmp_path / "deep" / "plot.png"
    assert read_image(out).shape[2] == 3 and read_image(out).shape[0] > 10
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in out.parent.iterdir()] == ["plot.png"]  # no temporary file left behind
