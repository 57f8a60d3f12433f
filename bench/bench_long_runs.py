"""Long runs: `nightseg predict` over a 2000-frame video and a 2000-image folder at constant memory, and a
2000-step training run killed (SIGKILL) in the middle and resumed, compared with an uninterrupted run.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_long_runs.py [--work /tmp/nightseg-long] \
        [--items 2000] [--steps 2000] [--json results.json]

Each `nightseg` command runs in a child process; a sampler thread reads the child's ``VmRSS`` / ``VmHWM`` from
``/proc/<pid>/status`` every 50 ms and the progress from the files it has written, and records the peak RSS
(VmHWM) once 10 % of the inputs are done and at 100 %. Constant memory: the two peaks differ by a few MB, not
by a per-input amount. The training part trains the packaged CPU recipe (pspnet_tiny) on `nightseg synth
--preset tiny` data with small crops, one thread, no validation; the killed run is SIGKILLed after its state
of step ``steps / 2`` (+ a few steps) is written, resumed with ``--resume``, and every tensor of its final
checkpoint is compared with the uninterrupted run's (bit-identical = ``torch.equal``). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.io import list_images, read_image, write_png
from nightseg.models import build_segmenter
from nightseg.synthetic.generator import generate

REPO = Path(__file__).resolve().parents[1]
NIGHTSEG = [sys.executable, "-m", "nightseg.cli"]
MARKS = (10, 25, 50, 75, 90)
"""Percentages of the inputs at which the peak RSS is recorded (and at 100 %)."""


def proc_status(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (kB) of process `pid` ({} once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def run_sampled(cmd: list[str], total: int, count_done, env: dict[str, str]) -> dict[str, float]:
    """Run `cmd`, sampling its memory; return peak RSS (MB) at `MARKS` % and 100 % of `total` inputs, and seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    last: dict[str, int] = {}

    def sample() -> None:
        while proc.poll() is None:
            status = proc_status(proc.pid)
            if status:
                last.update(status)
                done = count_done()
                for pct in MARKS:
                    if f"hwm_{pct}pct_mb" not in marks and done >= total * pct // 100:
                        marks[f"hwm_{pct}pct_mb"] = status["VmHWM"] / 1024
                        marks[f"rss_{pct}pct_mb"] = status["VmRSS"] / 1024
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    marks["hwm_100pct_mb"] = last.get("VmHWM", 0) / 1024  # the last sample before exit: the whole run's peak
    marks["rss_100pct_mb"] = last.get("VmRSS", 0) / 1024
    marks["done"] = count_done()
    marks["seconds"] = time.perf_counter() - start
    return {k: round(v, 1) for k, v in marks.items()}


def make_inputs(work: Path, n: int) -> tuple[Path, Path, Path]:
    """Write a synthetic tiny set, an `n`-image folder and an `n`-frame video (128x256, from its night frames)."""
    data = work / "data"
    generate(data, preset="tiny", seed=0, progress=False)
    frames = [read_image(p) for p in list_images(data / "dark_zurich" / "rgb_anon")][:8]
    frames = [cv2.resize(f, (256, 128), interpolation=cv2.INTER_AREA) for f in frames]
    folder = work / "images"
    existing = len(list_images(folder)) if folder.is_dir() else 0
    if existing != n:
        for i in range(n):  # every image differs (noise), so nothing can be cached by content
            noise = np.random.default_rng(i).integers(-8, 9, frames[0].shape)
            write_png(folder / f"frame_{i:05d}.png", np.clip(frames[i % len(frames)] + noise, 0, 255).astype(np.uint8))
    video = work / "drive.mp4"
    if not video.is_file():
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (256, 128))
        for i in range(n):
            writer.write(frames[i % len(frames)][..., ::-1])
        writer.release()
    return data, folder, video


def bench_predict(work: Path, folder: Path, video: Path, n: int, env: dict[str, str]) -> dict[str, dict]:
    """Predict the folder and the video with an untrained pspnet_tiny; return the memory marks of each."""
    torch.manual_seed(0)
    model = build_segmenter("pspnet_tiny").eval()
    ckpt = save_checkpoint(work / "pspnet_tiny.safetensors", model.state_dict(), {"model": model.config})
    results = {}
    out = work / "pred_images"
    shutil.rmtree(out, ignore_errors=True)
    results["folder"] = run_sampled(
        [*NIGHTSEG, "predict", str(ckpt), str(folder), "--out", str(out), "--workers", "1"], n,
        lambda: sum(1 for _ in out.glob("*_overlay.png")) if out.is_dir() else 0, env)
    out_v = work / "pred_video"
    shutil.rmtree(out_v, ignore_errors=True)
    frames_dir = out_v / video.stem
    results["video"] = run_sampled(
        [*NIGHTSEG, "predict", str(ckpt), str(video), "--out", str(out_v), "--workers", "1", "--video-overlay"], n,
        lambda: sum(1 for _ in frames_dir.glob("*_labelTrainIds.png")) if frames_dir.is_dir() else 0, env)
    return results


def train_cmd(data: Path, out: Path, steps: int) -> list[str]:
    """The `nightseg train` command of the long training run."""
    return [*NIGHTSEG, "train", "--config", str(REPO / "configs" / "cpu" / "supervised_cityscapes.yaml"),
            f"data.root={data}", f"train.max_steps={steps}", "train.val_every=0", "train.state_every=100",
            "train.cpu_threads=1", "train.progress=false", "data.workers=0", "data.source.crop=[64,64]",
            "data.val.dataset=null", "--out", str(out)]


def bench_resume(work: Path, data: Path, steps: int, env: dict[str, str]) -> dict:
    """Train `steps` steps straight, and again with a SIGKILL after the middle state and a resume; compare."""
    straight, killed = work / "train_straight", work / "train_killed"
    for run in (straight, killed):
        shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(train_cmd(data, straight, steps), env=env, check=True, capture_output=True)
    straight_s = time.perf_counter() - t0
    proc = subprocess.Popen(train_cmd(data, killed, steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = killed / "state" / "state.json"
    half = steps // 2
    while proc.poll() is None:
        if state.is_file():
            try:
                step = json.loads(state.read_text())["step"]
            except (ValueError, KeyError):
                step = 0
            if step >= half:
                time.sleep(0.5)  # a few steps past the state: they are lost and redone by the resume
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    t0 = time.perf_counter()
    subprocess.run([*NIGHTSEG, "train", "--out", str(killed), "--resume"], env=env, check=True, capture_output=True)
    resume_s = time.perf_counter() - t0
    a = load_file(str(straight / "checkpoints" / "last.safetensors"))
    b = load_file(str(killed / "checkpoints" / "last.safetensors"))
    same = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    steps_b = json.loads((killed / "metrics.json").read_text())["step"]
    return {"steps": steps, "killed_after_state_step": killed_at, "sigkill_exit": proc.returncode,
            "final_step_resumed": steps_b, "tensors": len(a), "bit_identical": bool(same),
            "straight_seconds": round(straight_s, 1), "resumed_part_seconds": round(resume_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nightseg-long"))
    parser.add_argument("--items", type=int, default=2000, help="images in the folder and frames in the video")
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args.work.mkdir(parents=True, exist_ok=True)
    data, folder, video = make_inputs(args.work, args.items)
    results: dict[str, object] = {"items": args.items}
    if not args.skip_predict:
        results["predict"] = bench_predict(args.work, folder, video, args.items, env)
        print(json.dumps(results["predict"], indent=1), flush=True)
    if not args.skip_train:
        results["train"] = bench_resume(args.work, data, args.steps, env)
        print(json.dumps(results["train"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
