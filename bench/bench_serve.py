"""Time `nightseg serve` from upload to overlay in a real headless browser (issue 22's speed target: under 1 s
on 2 cores for a 1024x512 image with pspnet_tiny or lraspp_mobilenetv3, the model already loaded).

    .venv/bin/python bench/bench_serve.py [--models pspnet_tiny lraspp_mobilenetv3] [--n 7] [--threads 2]
                                          [--screenshot docs/images/app.png]

For each model: a random-weight checkpoint, ``nightseg serve`` in a subprocess (``OMP_NUM_THREADS`` = --threads,
pinned to the first --threads cores with ``taskset`` when it exists), Debian's Chromium driven by Playwright;
one warm-up upload loads the model, then --n uploads of the real Dark Zurich night frame resized to 1024x512
(each under a new name, so nothing is cached). Per upload: the wall time from handing the file to the page
until model A's overlay image has loaded in the page, and the server's own time for the request (the
status line's "Done in N ms"); the rest is the upload, Gradio's queue and events, and the browser. Also the
server process's CPU time per upload (all its threads, from /proc), which a loaded machine does not inflate
the way it inflates wall times.
With --screenshot, the page after a two-model comparison on the full-size night frame is saved as a PNG (for
the README and docs/app.md; docs/images/app.png shows the `nightseg demo` source-only and ULCA checkpoints,
given with --screenshot-checkpoints).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NIGHT = ROOT.parent / "shared" / "realdata" / "dark_zurich_pair" / "GP010375_frame_000036_rgb.png"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def make_checkpoint(folder: Path, model: str, seed: int) -> Path:
    """Write a random-weight checkpoint of `model` and return its path."""
    import torch

    from nightseg.core.checkpoint import save_checkpoint
    from nightseg.models import build_segmenter

    torch.manual_seed(seed)
    net = build_segmenter(model).eval()
    return save_checkpoint(folder / f"{model}_seed{seed}" / "model.safetensors", net.state_dict(), {"model": net.config})


def start_server(checkpoints: list[Path], threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``nightseg serve`` on a free port; return (the process, its URL) once it listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "nightseg.cli", "serve", *map(str, checkpoints), "--port", str(port)]
    if shutil.which("taskset") and (os.cpu_count() or 1) >= threads:
        cmd = ["taskset", "-c", f"0-{threads - 1}", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while "temporary files in" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"nightseg serve did not start:\n{log.read_text()}")
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system, all threads) the process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload(page, path: Path) -> tuple[float, float]:
    """Upload `path`; return (seconds until model A's overlay has loaded, the server's seconds)."""
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.click()
    start = time.perf_counter()
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_function(
        """stem => { const img = document.querySelector('#overlay-a img');
                     return img && img.src.includes(stem + '_A_overlay') && img.complete && img.naturalWidth > 0; }""",
        arg=path.stem)
    wall = time.perf_counter() - start
    server = re.search(r"Done in (\d+) ms", page.inner_text("#status"))
    return wall, int(server.group(1)) / 1000 if server else float("nan")


def screenshot(browser, checkpoints: list[Path], threads: int, work: Path, out: Path) -> None:
    """Save the page after model A vs model B on the real night frame (relighting on when A bundles it)."""
    proc, url = start_server(checkpoints, threads, work / "screenshot.log")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1330})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.locator("#model-b input").click()
        page.get_by_role("option", name=str(checkpoints[1])).click()
        upload(page, NIGHT)
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('disagree')")
        page.wait_for_selector("#exposure-plot img")
        time.sleep(1.0)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        print(f"screenshot: {out}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["pspnet_tiny", "lraspp_mobilenetv3"])
    parser.add_argument("--n", type=int, default=7, help="timed uploads per model")
    parser.add_argument("--threads", type=int, default=2, help="cores (and torch threads) for the server")
    parser.add_argument("--screenshot", type=Path, help="save the page after a two-model comparison here")
    parser.add_argument("--screenshot-checkpoints", nargs=2, type=Path, metavar="CKPT",
                        help="the two checkpoints of the screenshot (default: random pspnet_tiny weights)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    frame = np.asarray(Image.open(NIGHT).convert("RGB").resize((1024, 512), Image.BILINEAR))
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; server on {args.threads} core(s)")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            for model in args.models:
                checkpoints = [make_checkpoint(work, model, 0), make_checkpoint(work, model, 1)]
                proc, url = start_server(checkpoints, args.threads, work / f"{model}.log")
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1100})
                    page.set_default_timeout(300_000)
                    page.goto(url)
                    Image.fromarray(frame).save(work / "warmup.png")
                    upload(page, work / "warmup.png")  # loads the model
                    walls, servers, cpus = [], [], []
                    for k in range(args.n):
                        path = work / f"night_{model}_{k}.png"
                        Image.fromarray(frame).save(path)
                        time.sleep(1.0)  # let the previous request's statistics event finish
                        cpu = cpu_seconds(proc.pid)
                        wall, server = upload(page, path)
                        cpus.append(cpu_seconds(proc.pid) - cpu)
                        walls.append(wall)
                        servers.append(server)
                    print(f"{model}: upload -> overlay median {statistics.median(walls):.3f} s "
                          f"(min {min(walls):.3f}, max {max(walls):.3f}); server's part median "
                          f"{statistics.median(servers):.3f} s; server CPU time per upload median "
                          f"{statistics.median(cpus):.3f} s; n={args.n}")
                    page.close()
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
            if args.screenshot:
                checkpoints = args.screenshot_checkpoints or [make_checkpoint(work, args.models[0], s) for s in (0, 1)]
                screenshot(browser, checkpoints, args.threads, work, args.screenshot)
            browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
