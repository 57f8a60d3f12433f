"""`nightseg serve`: the request handlers in plain pytest (no browser), the command's checks, and that
Gradio stays an optional extra. The page itself is driven in a real browser by tests/test_serve_browser.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.classes import PALETTE
from nightseg.core.errors import UserError
from nightseg.core.io import read_image, read_label, write_png
from nightseg.evaluation.exposure import exposure_bins
from nightseg.inference import Predictor
from nightseg.models import build_segmenter
from nightseg.pipelines.serve_handlers import (
    DISAGREE_COLOR,
    ModelCache,
    ModelOptions,
    confidence_figure,
    confidence_step,
    disagreement,
    exposure_confidence,
    load_input,
    pixel_shares,
    predict_labels,
    restyle,
    run_request,
    shares_html,
)

H, W = 48, 80
MB = 2**20


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``pspnet_tiny`` with seed 1: it predicts differently from `tiny_checkpoint` (seed 0)."""
    import torch

    torch.manual_seed(1)
    model = build_segmenter("pspnet_tiny").eval()
    path = tmp_path_factory.mktemp("second_checkpoint") / "seed1.safetensors"
    save_checkpoint(path, model.state_dict(), {"model": model.config})
    return path


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    """A night-like image: a dark gradient with a bright lamp, so several exposure bins have pixels."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 120, W, dtype=np.float64)[None, :, None].repeat(H, 0).repeat(3, 2)
    image = np.clip(ramp + rng.normal(0, 8, size=(H, W, 3)), 0, 255).astype(np.uint8)
    image[5:15, 60:75] = 250
    return write_png(tmp_path / "night.png", image)


def test_model_cache_loads_each_checkpoint_once_per_options(tiny_checkpoint, second_checkpoint, one_torch_thread):
    cache = ModelCache()
    a1, lock_a = cache.get(ModelOptions(str(tiny_checkpoint)))
    a2, lock_a2 = cache.get(ModelOptions(str(tiny_checkpoint)))
    assert a1 is a2 and lock_a is lock_a2 and cache.loads == 1
    b, lock_b = cache.get(ModelOptions(str(second_checkpoint)))
    assert b is not a1 and lock_b is not lock_a and cache.loads == 2
    flipped, _ = cache.get(ModelOptions(str(tiny_checkpoint), tta="flip"))  # other options: another model
    assert flipped is not a1 and flipped.tta.flip and not a1.tta.flip and cache.loads == 3
    small = ModelCache(capacity=1)
    small.get(ModelOptions(str(tiny_checkpoint)))
    small.get(ModelOptions(str(second_checkpoint)))
    small.get(ModelOptions(str(tiny_checkpoint)))  # dropped when the second came in: loaded again
    assert small.loads == 3 and len(small.models) == 1


def test_model_cache_loads_once_under_concurrent_requests(tiny_checkpoint, one_torch_thread):
    cache = ModelCache()
    got: list[Predictor] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(ModelOptions(str(tiny_checkpoint)))[0]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.loads == 1 and len({id(p) for p in got}) == 1


def test_request_writes_label_colour_and_overlay_pngs(tiny_checkpoint, image_file, tmp_path, one_torch_thread):
    cache = ModelCache()
    root = tmp_path / "server-tmp"
    result = run_request(cache, image_file, ModelOptions(str(tiny_checkpoint)), None, root, opacity=0.3)
    model = result.models[0]
    for path in (model.labels_png, model.color_png, model.overlay_png):
        assert path.is_file() and root in path.parents  # written only into the server's temporary folder
    assert result.downloads == [model.labels_png, model.color_png, model.overlay_png]
    labels = read_label(model.labels_png)
    expected = Predictor.from_checkpoint(tiny_checkpoint).predict(read_image(image_file)).labels
    np.testing.assert_array_equal(labels, expected)
    color = read_image(model.color_png)
    np.testing.assert_array_equal(color, PALETTE[labels])
    image = read_image(image_file)
    blend = read_image(model.overlay_png).astype(int)
    np.testing.assert_allclose(blend, image * 0.7 + color * 0.3, atol=1.5)
    assert np.abs(blend - image).max() > 20  # the overlay is not the input
    np.testing.assert_allclose(model.shares, np.bincount(labels.ravel(), minlength=19) / labels.size)
    assert result.relit_png is None and result.disagreement_png is None
    # the opacity slider redraws the overlay from the written files, without the model
    restyle(result, 1.0)
    np.testing.assert_array_equal(read_image(model.overlay_png), color)
    assert cache.loads == 1
    run_request(cache, image_file, ModelOptions(str(tiny_checkpoint)), None, root)
    assert cache.loads == 1  # the second request reuses the loaded model


def test_two_models_give_their_disagreement(tiny_checkpoint, second_checkpoint, image_file, tmp_path,
                                           one_torch_thread):
    result = run_request(ModelCache(), image_file, ModelOptions(str(tiny_checkpoint)),
                         ModelOptions(str(second_checkpoint)), tmp_path / "tmp")
    a, b = (read_label(m.labels_png) for m in result.models)
    mask = a != b
    assert 0 < mask.mean() <= 1 and result.disagreement_share == pytest.approx(mask.mean())
    shown = read_image(result.disagreement_png)
    assert (shown[mask] == DISAGREE_COLOR).all()
    assert not (shown[~mask] == DISAGREE_COLOR).all(axis=1).any()
    assert len(result.downloads) == 7  # 3 per model + the disagreement image
    table = shares_html(result)
    assert table.count("<tr>") == 20 and "B %" in table  # header + 19 classes, one column per model


def test_confidence_is_the_max_softmax_on_a_subsampled_grid(tiny_checkpoint, one_torch_thread):
    assert confidence_step(48, 80) == 1 and confidence_step(512, 1024) == 2 and confidence_step(1080, 1920) == 4
    image = np.random.default_rng(3).integers(0, 256, size=(300, 520, 3), dtype=np.uint8)  # 156k px: step 2
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    labels, confidence, step = predict_labels(predictor, image)
    full = predictor.predict(image)
    assert step == 2 and confidence.shape == (150, 260)
    np.testing.assert_array_equal(labels, full.labels)
    np.testing.assert_allclose(confidence, full.confidence[::2, ::2], atol=1e-5)


def test_disagreement_mask_on_known_maps():
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    a = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    b = np.array([[0, 9, 2], [3, 4, 0]], dtype=np.uint8)
    mask, shown = disagreement(image, a, b)
    np.testing.assert_array_equal(mask, [[False, True, False], [False, False, True]])
    assert (shown[0, 1] == DISAGREE_COLOR).all() and (shown[1, 2] == DISAGREE_COLOR).all()
    assert (shown[0, 0] == 80).all()  # agreeing pixels: the input dimmed to 40 % grey


def test_pixel_shares_sum_to_one():
    labels = np.array([[0, 0, 1, 18], [18, 18, 18, 5]], dtype=np.uint8)
    shares = pixel_shares(labels, 19)
    assert shares.sum() == pytest.approx(1.0)
    assert shares[0] == pytest.approx(2 / 8) and shares[18] == pytest.approx(4 / 8) and shares[2] == 0


def test_exposure_confidence_is_the_mean_max_softmax_per_hsv_v_bin():
    image = np.zeros((2, 4, 3), dtype=np.uint8)
    image[0, :2] = [10, 0, 0]          # V = 10/255, bin 0
    image[0, 2:] = [0, 60, 30]         # V = 60/255 = 0.235, bin 2
    image[1, :] = [255, 255, 255]      # V = 1, the last bin
    confidence = np.array([[0.2, 0.4, 0.9, 0.7], [0.5, 0.5, 0.6, 0.6]], dtype=np.float32)
    mean, share = exposure_confidence(image, confidence)
    assert mean[0] == pytest.approx(0.3) and mean[2] == pytest.approx(0.8) and mean[9] == pytest.approx(0.55)
    assert np.isnan(mean[[1, 3, 4, 5, 6, 7, 8]]).all()
    np.testing.assert_allclose(share[[0, 2, 9]], [0.25, 0.25, 0.5])
    # the same bins as the mEF1 metric
    bins = exposure_bins(__import__("torch").from_numpy(image).permute(2, 0, 1)).numpy()
    np.testing.assert_array_equal(np.unique(bins), [0, 2, 9])


def test_exposure_plot_has_one_bar_group_per_model(tiny_checkpoint, second_checkpoint, image_file, tmp_path,
                                                   one_torch_thread):
    result = run_request(ModelCache(), image_file, ModelOptions(str(tiny_checkpoint)),
                         ModelOptions(str(second_checkpoint)), tmp_path / "tmp")
    fig = confidence_figure(result)
    bars = fig.axes[0].patches
    assert len(bars) == 20
    heights = [bar.get_height() for bar in bars[:10]]
    np.testing.assert_allclose(heights, np.nan_to_num(result.models[0].bin_confidence))
    assert all(0 <= h <= 1 for h in heights) and max(heights) > 1 / 19  # max-softmax of 19 classes


def test_bad_uploads_are_refused_with_one_line(tiny_checkpoint, image_file, tmp_path, one_torch_thread, monkeypatch):
    cache = ModelCache()
    options = ModelOptions(str(tiny_checkpoint))
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2 * MB))
    with pytest.raises(UserError, match=r"big\.png: 2\.0 MB is above the upload limit of 1 MB"):
        run_request(cache, big, options, None, tmp_path / "tmp", max_bytes=MB)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(UserError, match=r"notes\.txt: not an image or video \(\.txt\)"):
        run_request(cache, text, options, None, tmp_path / "tmp")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    with pytest.raises(UserError, match=r"corrupt\.png: cannot decode image") as info:
        run_request(cache, corrupt, options, None, tmp_path / "tmp")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="megapixels"):
        load_input(image_file, MB, max_pixels=100)
    with pytest.raises(UserError, match="checkpoint not found"):
        run_request(cache, image_file, ModelOptions(str(tmp_path / "missing.safetensors")), None, tmp_path / "tmp")
    import huggingface_hub

    def offline(**kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("outgoing traffic has been disabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match=r"hf:user/model: could not fetch https://huggingface.co/user/model") as info:
        run_request(cache, image_file, ModelOptions("hf:user/model"), None, tmp_path / "tmp")
    assert "\n" not in str(info.value)
    # after the refusals the same cache still serves a good request
    result = run_request(cache, image_file, options, None, tmp_path / "tmp")
    assert read_label(result.models[0].labels_png).shape == (H, W)


def test_hub_references_and_model_folders_are_served(image_file, tmp_path, one_torch_thread, monkeypatch):
    # the page takes what `nightseg import` takes: an hf: reference (downloaded once; faked here) or a folder
    pytest.importorskip("transformers")
    from test_pretrained import fake_hub, hf_segformer

    folder = tmp_path / "hub_model"
    hf_segformer(folder)
    calls = fake_hub(monkeypatch, folder)
    cache = ModelCache()
    via_hub = run_request(cache, image_file, ModelOptions("hf:org/segformer@main"), None, tmp_path / "a")
    via_folder = run_request(cache, image_file, ModelOptions(str(folder)), None, tmp_path / "b")
    assert calls == [("org/segformer", "main")]
    hub_labels, folder_labels = read_label(via_hub.models[0].labels_png), read_label(via_folder.models[0].labels_png)
    assert hub_labels.shape == (H, W) and np.array_equal(hub_labels, folder_labels) and hub_labels.max() < 19


def test_video_frame_is_predicted(tiny_checkpoint, tmp_path, one_torch_thread):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (W, H))
    for k in range(4):
        writer.write(np.full((H, W, 3), 40 * k + 20, dtype=np.uint8))
    writer.release()
    frame = load_input(video, 10 * MB, frame=3)
    assert frame.shape == (H, W, 3) and abs(int(frame.mean()) - 140) <= 3  # the 4th frame, not the first
    result = run_request(ModelCache(), video, ModelOptions(str(tiny_checkpoint)), None, tmp_path / "tmp", frame=2)
    assert read_image(result.input_png).shape == (H, W, 3) and result.input_png.parent == result.folder
    with pytest.raises(UserError, match="no frame 9"):
        load_input(video, 10 * MB, frame=9)


def test_onnx_model_refuses_relighting(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(UserError, match="ONNX model already contains its relighting"):
        ModelCache().get(ModelOptions(str(onnx), relight=True))


def test_serve_without_gradio_says_how_to_install(tiny_checkpoint, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    r = run_cli("serve", tiny_checkpoint, "--port", "7861")
    assert r.code == 2
    assert r.err.strip() == 'error: nightseg serve needs Gradio, an optional extra: pip install -e ".[app]"'


def test_serve_checks_its_arguments_before_starting(tiny_checkpoint, tmp_path, run_cli):
    pytest.importorskip("gradio")
    r = run_cli("serve", tmp_path / "nope.safetensors")
    assert r.code == 2 and "nope.safetensors: checkpoint not found" in r.err
    r = run_cli("serve", tiny_checkpoint, "--images", tmp_path / "no-folder")
    assert r.code == 2 and "no-folder" in r.err
    r = run_cli("serve", tiny_checkpoint, "--tta", "sideways")
    assert r.code == 2 and "--tta sideways" in r.err


def test_library_and_cli_do_not_import_gradio():
    code = ("import sys, nightseg, nightseg.cli, nightseg.commands.serve, nightseg.pipelines.serve; "
            "from nightseg.cli import build_parser; build_parser('serve'); "
            "assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_app_offers_the_images_folder_and_relights_only_where_it_can(tiny_checkpoint, tmp_path, monkeypatch):
    from nightseg.pipelines.serve import App, ServeConfig

    monkeypatch.delenv("NIGHTSEG_RELIGHT_WEIGHTS", raising=False)
    folder = tmp_path / "frames"
    write_png(folder / "b.png", np.zeros((4, 4, 3), dtype=np.uint8))
    write_png(folder / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (folder / "clip.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    app = App(ServeConfig([str(tiny_checkpoint)], images=folder), tmp_path / "tmp")
    assert [Path(p).name for p in app.folder_files] == ["a.png", "b.png", "clip.mp4"]
    notes: list[str] = []
    options = app.options(str(tiny_checkpoint), relight=True, night2day=False, sliding=True, tta=True, notes=notes)
    assert not options.relight and "bundles no Zero-DCE net" in notes[0]  # nothing to relight with: said, not failed
    assert options.window == "512x512" and options.tta == "flip"
    with_weights = App(ServeConfig([str(tiny_checkpoint)], relight_weights="dce.pth"), tmp_path / "tmp")
    options = with_weights.options(str(tiny_checkpoint), relight=True, night2day=False, sliding=False, tta=False)
    assert options.relight and options.relight_weights == "dce.pth" and options.window is None and options.tta is None
    assert not app.options("model.onnx", relight=True, night2day=True, sliding=False, tta=False).relight
