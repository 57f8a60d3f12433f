"""`nightseg serve` end to end in a real headless browser: Debian's Chromium driven by Playwright.

The server runs as ``nightseg serve`` in a subprocess on a free port of 127.0.0.1. The test uploads the
real Dark Zurich night frame, waits for the overlay and checks its pixels against the input's, times
upload -> overlay on a 1024x512 frame (recorded, not asserted: bench/bench_serve.py is the measurement),
compares two checkpoints and reads back their disagreement image, then uploads a corrupt file, sees the
message and checks that the server still answers. Skipped, with the reason, without Chromium, Playwright
or Gradio (``.ci/run`` installs them in CI).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.io import read_image, write_png
from nightseg.models import build_segmenter

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
NIGHT_FRAME = "dark_zurich_pair/GP010375_frame_000036_rgb.png"
MAGENTA = (255, 0, 255)

pytestmark = pytest.mark.slow


def _requirements() -> str | None:
    """Return why the browser test cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does it in CI)"
    for module, extra in (("playwright", "test"), ("gradio", "app")):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module} not installed (pip install -e \".[{extra}]\")"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint(folder: Path, seed: int) -> Path:
    """An untrained ``pspnet_tiny`` checkpoint with `seed` (as conftest's `tiny_checkpoint`)."""
    import torch

    torch.manual_seed(seed)
    model = build_segmenter("pspnet_tiny").eval()
    return save_checkpoint(folder / f"seed{seed}" / "model.safetensors", model.state_dict(), {"model": model.config})


def _fetch(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """``nightseg serve`` with two checkpoints on a free port; yields (url, its temporary folder)."""
    reason = _requirements()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    folder = tmp_path_factory.mktemp("serve")
    checkpoints = [_checkpoint(folder, 0), _checkpoint(folder, 1)]
    port = _free_port()
    log = folder / "server.log"
    pair = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "dark_zurich_pair"
    images = ["--images", str(pair)] if pair.is_dir() else []  # offered in the page's folder list
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nightseg.cli", "serve", *map(str, checkpoints),
                                 "--port", str(port), *images], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, root = time.monotonic() + 180, None
        while root is None:
            match = re.search(r"temporary files in (\S+);", log.read_text())
            if match:
                root = Path(match.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nightseg serve did not start:\n{log.read_text()}")
            else:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", root, checkpoints
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, log.read_text()
    assert not root.exists()  # stopping the server removes its temporary folder


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright gives every launch a new, temporary --user-data-dir
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1100})
        tab.set_default_timeout(240_000)
        tab.goto(server[0])
        yield tab
        browser.close()


def _wait(page, script: str, arg: object = None, what: str = "") -> None:
    """Wait until the JavaScript function `script` returns true; fail with the page's status line if not."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(script, arg=arg)
    except PlaywrightTimeout:
        status = page.locator("#status").inner_text() if page.locator("#status").count() else "(no status line)"
        pytest.fail(f"timed out waiting for {what}; the page's status line: {status}")


def _upload(page, path: Path) -> float:
    """Upload `path` through the page's file box; return the seconds until model A's overlay of it shows."""
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.click()
    start = time.perf_counter()
    page.set_input_files("#upload input[type=file]", str(path))
    _wait(page, """stem => { const img = document.querySelector('#overlay-a img');
                     return img && img.src.includes(stem + '_A_overlay') && img.complete && img.naturalWidth > 0; }""",
          path.stem, f"the overlay of {path.name}")
    return time.perf_counter() - start


def test_upload_compare_and_refuse_in_a_browser(server, page, realdata, tmp_path, record_property):
    _, root, checkpoints = server
    night = realdata / NIGHT_FRAME

    # 1. the real Dark Zurich night frame: the overlay is the prediction blended in, not the input
    _upload(page, night)
    overlay_src = page.get_attribute("#overlay-a img", "src")
    assert str(root) in overlay_src  # served from the server's temporary folder
    shown = _fetch(overlay_src)
    image = read_image(night)
    assert shown.shape == image.shape
    assert np.abs(shown.astype(int) - image).mean() > 10
    assert "Done in" in page.inner_text("#status")
    links = page.locator("#downloads a[download]")
    names = sorted(links.nth(i).get_attribute("download") for i in range(links.count()))
    assert names == sorted(f"{night.stem}_A_{kind}.png" for kind in ("color", "labelTrainIds", "overlay"))
    label_url = next(links.nth(i).get_attribute("href") for i in range(links.count())
                     if "labelTrainIds" in links.nth(i).get_attribute("download"))
    with urllib.request.urlopen(label_url, timeout=30) as response:
        labels = np.asarray(Image.open(io.BytesIO(response.read())))
    assert labels.shape == image.shape[:2] and labels.max() < 19
    page.wait_for_selector("#exposure-plot img")
    assert page.locator("#shares tr").count() == 20  # legend: header + 19 classes with their shares

    # 2. upload -> overlay on a 1024x512 frame, the model loaded (recorded for docs/benchmarks.md)
    small = Image.fromarray(image).resize((1024, 512), Image.BILINEAR)
    times = []
    for k in range(3):
        path = write_png(tmp_path / f"night1024_{k}.png", np.asarray(small))
        times.append(_upload(page, path))
    record_property("upload_to_overlay_s_1024x512", times)
    print(f"upload -> overlay, 1024x512, pspnet_tiny: {[round(t, 3) for t in times]} s, "
          f"median {statistics.median(times):.3f} s")

    # 3. compare with the second checkpoint: both overlays in the slider, the disagreement highlighted
    page.locator("#model-b input").click()
    page.get_by_role("option", name=str(checkpoints[1])).click()
    page.wait_for_selector("#disagreement img")
    _wait(page, "() => document.querySelector('#status').innerText.includes('disagree')", None, "the comparison")
    assert page.locator("#compare img").count() == 2
    diff = _fetch(page.get_attribute("#disagreement img", "src"))
    share = float(re.search(r"disagree on ([\d.]+) %", page.inner_text("#status")).group(1))
    magenta = (diff == MAGENTA).all(axis=2).mean() * 100
    assert share > 0 and magenta == pytest.approx(share, abs=0.1)

    # 4. a corrupt file: the message shows in the page and the server keeps working
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    page.locator("#upload button[aria-label='Clear']").click()
    page.set_input_files("#upload input[type=file]", str(corrupt))
    _wait(page, "() => document.querySelector('#status').innerText.includes('corrupt.png')", None,
          "the message about the corrupt file")
    assert "cannot decode image" in page.inner_text("#status")
    again = shutil.copy(night, tmp_path / "night_again.png")
    _upload(page, Path(again))
    assert "Done in" in page.inner_text("#status")

    # 5. a file of the --images folder replaces the upload: the day frame of the Dark Zurich pair
    day = next((realdata / NIGHT_FRAME).parent.glob("GOPR0374_*_rgb.png"))
    page.locator("#folder input").click()
    page.get_by_role("option", name=str(day)).click()
    _wait(page, """stem => { const img = document.querySelector('#overlay-a img');
                     return img && img.src.includes(stem + '_A_overlay') && img.complete; }""",
          day.stem, "the overlay of the folder's day frame")
    assert page.locator("#upload button[aria-label='Clear']").count() == 0  # the upload box was emptied
