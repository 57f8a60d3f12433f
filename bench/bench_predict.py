"""Inference throughput: end-to-end `nightseg predict` vs the bare forward pass; onnxruntime vs PyTorch.

Builds a temporary folder of N 1024x512 PNG frames (the real Cityscapes val frames from ../shared/realdata,
downscaled and shifted so that every file differs; smooth noise if those are absent) and a checkpoint of
the chosen model (random weights: speed does not depend on them), then times

1. **bare forward**: the network alone on preloaded tensors (as `Predictor` runs it: BatchNorm folded,
   channels_last, inference_mode), images/s;
2. **end-to-end predict**: `nightseg predict`'s pipeline on the folder: PNG decode, forward, argmax and
   writing ``_labelTrainIds``, ``_color`` and ``_overlay`` PNGs; decoding runs ahead and writing runs
   behind in threads (``--workers``), and the same without threads (everything in turn);
3. **onnxruntime vs PyTorch eager** forward on the same inputs (CPU), and PyTorch without our
   settings (NCHW, BatchNorm not folded) for reference.

Overhead = end-to-end time per image / bare forward time per image - 1 (target <= 15 %). The forward and
end-to-end measurements alternate for ``--rounds`` rounds; each round's ratio uses that round's forward
time, and the median (and range) of the ratios is reported, in wall-clock time and in CPU time of the
process (all threads). On a shared, loaded machine the CPU-time ratio is the stable one; it is also the
wall-clock overhead to expect when the cores are saturated and decoding/writing cannot overlap.

    .venv/bin/python bench/bench_predict.py [--model pspnet_tiny] [--n 4] [--rounds 5] [--device cpu] [--workers 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.io import write_png
from nightseg.inference import OnnxNet, Predictor, load_inference_net
from nightseg.models import build_segmenter
from nightseg.pipelines.predict import DEFAULT_OUTPUTS, Item, OutputWriter, predict_images

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "cityscapes_samples"
W, H = 1024, 512


def source_frames() -> tuple[list[np.ndarray], str]:
    """Return 1024x512 RGB frames and where they came from."""
    full = sorted((REAL / "fullres_val_no_gt").glob("*_leftImg8bit.png"))
    if full:
        return [np.asarray(Image.open(p).convert("RGB").resize((W, H), Image.BILINEAR)) for p in full], "real Cityscapes val"
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (H // 16, W // 16, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
    return [smooth], "synthetic (../shared absent)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward(fn, xs: list[torch.Tensor], device: torch.device) -> tuple[float, float]:
    """Return (wall, CPU) seconds per image of `fn` over `xs` (after one warm-up call)."""
    with torch.inference_mode():
        fn(xs[0])
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for x in xs:
            fn(x)
        sync(device)
    return (time.perf_counter() - wall) / len(xs), (time.process_time() - cpu) / len(xs)


def video_memory(model_name: str, frames: int) -> None:
    """Print the process's peak RSS after predicting a video of frames/10 frames, then of `frames` frames."""
    import resource

    import cv2

    from nightseg.pipelines.predict import predict_video

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_segmenter(model_name).eval()
        ckpt = save_checkpoint(root / "model.safetensors", model.state_dict(), {"model": model.config})
        seg = Predictor.from_checkpoint(ckpt)
        for n in (max(1, frames // 10), frames):
            path = root / f"clip{n}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (256, 128))
            for _ in range(n):
                writer.write(rng.integers(0, 256, (128, 256, 3), dtype=np.uint8))  # noise: worst case for the codec
            writer.release()
            start = time.perf_counter()
            out = OutputWriter(root / f"out{n}", DEFAULT_OUTPUTS, 19)
            predict_video(seg, Item(path, Path(path.stem), True), out, video_overlay=True, batch_size=4, progress=False)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"video of {n:5d} frames (128x256): {time.perf_counter() - start:6.1f} s, peak RSS so far {peak:7.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pspnet_tiny", help="segmenter to build (random weights)")
    parser.add_argument("--n", type=int, default=4, help="number of 1024x512 frames")
    parser.add_argument("--rounds", type=int, default=5, help="alternating forward / end-to-end rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="decode/write threads of the pipeline")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--skip-naive", action="store_true", help="skip the NCHW/unfused reference (slow on CPU)")
    parser.add_argument("--video-frames", type=int, default=0,
                        help="instead: peak memory of predicting a 128x256 video of this many frames vs a tenth of it")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.video_frames:
        video_memory(args.model, args.video_frames)
        return
    device = torch.device(args.device)
    frames, origin = source_frames()
    results: dict[str, float | str | int] = {"model": args.model, "device": str(device), "n": args.n, "frames": origin,
                                             "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_segmenter(args.model).eval()
        ckpt = save_checkpoint(root / "model.safetensors", model.state_dict(), {"model": model.config})
        items = []
        for i in range(args.n):
            path = write_png(root / "in" / f"frame_{i:04d}.png", np.roll(frames[i % len(frames)], 7 * i, axis=1))
            items.append(Item(path, Path(path.stem)))
        seg = Predictor.from_checkpoint(ckpt, device=device)
        xs = [torch.from_numpy(np.array(Image.open(it.src))).permute(2, 0, 1)[None].float().div(255).to(device)
              for it in items]
        warm = OutputWriter(root / "warm", DEFAULT_OUTPUTS, 19, workers=0)
        predict_images(seg, items[:1], warm, progress=False)  # warm-up of the whole pipeline

        # 1. bare forward (what the Predictor runs: folded BN, channels_last) and 2. end-to-end predict
        # (threaded and serial), alternating; each round's end-to-end time is compared with the forward time
        # of the same round, so that load changes between rounds cancel out
        times: dict[str, list[tuple[float, float]]] = {"forward": [], "e2e": [], "e2e_serial": []}
        for r in range(args.rounds):
            times["forward"].append(time_forward(seg._forward, xs, device))
            for name, workers in (("e2e", args.workers), ("e2e_serial", 0)):
                writer = OutputWriter(root / f"{name}{r}", DEFAULT_OUTPUTS, 19, workers=workers)
                sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                with writer:
                    predict_images(seg, items, writer, batch_size=args.batch_size, workers=workers, progress=False)
                sync(device)
                times[name].append(((time.perf_counter() - wall) / args.n, (time.process_time() - cpu) / args.n))
        for name, values in times.items():
            results[f"{name}_s_per_img"] = float(np.median([w for w, _ in values]))
            results[f"{name}_cpu_s_per_img"] = float(np.median([c for _, c in values]))
        for name in ("e2e", "e2e_serial"):
            ratios = [e[0] / f[0] - 1 for e, f in zip(times[name], times["forward"])]
            cpu_ratios = [e[1] / f[1] - 1 for e, f in zip(times[name], times["forward"])]
            results[f"overhead_{name}_pct"] = 100 * float(np.median(ratios))
            results[f"overhead_{name}_range"] = f"{100 * min(ratios):.1f}..{100 * max(ratios):.1f}"
            results[f"overhead_{name}_cpu_pct"] = 100 * float(np.median(cpu_ratios))

        # 3. onnxruntime vs PyTorch eager (CPU)
        if not args.skip_onnx and device.type == "cpu":
            from nightseg.inference.onnx import export_onnx

            net, _ = load_inference_net(ckpt)
            export_onnx(net, root / "model.onnx", size=(256, 512), check=False)
            runner = OnnxNet(root / "model.onnx", threads=args.threads)
            results["onnxruntime_s_per_img"], results["onnxruntime_cpu_s_per_img"] = time_forward(runner, xs, device)
        if not args.skip_naive:
            naive = copy.deepcopy(model).to(device)  # NCHW, BatchNorm not folded
            results["torch_nchw_unfused_s_per_img"], _ = time_forward(naive, xs[:2], device)
    for key, value in results.items():
        if key.endswith("_s_per_img"):
            print(f"{key:34s} {value * 1000:9.1f} ms/img   {1 / value:7.2f} img/s")
        elif key.endswith("_pct"):
            print(f"{key:34s} {value:9.1f} %")
        else:
            print(f"{key:34s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
