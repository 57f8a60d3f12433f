"""Benchmark the NightSeg models on the CPU; prints Markdown tables for docs/benchmarks.md.

    .venv/bin/python bench/bench_models.py                      # everything (tens of minutes on 2 cores)
    .venv/bin/python bench/bench_models.py --models pspnet_r18,segformer_b0
    .venv/bin/python bench/bench_models.py --only train-step     # training step time of the small models
    .venv/bin/python bench/bench_models.py --only cross-attention

Sections:
- models: parameters, FLOPs (torch.utils.flop_counter, 1 multiply-add = 2 FLOPs) and forward latency at
  1024x512 (W x H), batch 1, on `--threads` CPU threads, in five settings: eager under ``no_grad``;
  ``inference_mode``; + ``channels_last``; + BatchNorm folded into the convs (`fuse_batchnorm`); + both.
- train-step: one SGD step (forward, cross entropy, backward, update) at batch 4, 128x256 crops.
- cross-attention: peak memory (ru_maxrss growth, each case in a fresh process) and time of
  `CrossAttention` on 1/8 of 1024x2048 (128x256 = 32768 positions).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from nightseg.models import build_segmenter, fuse_batchnorm, list_segmenters
from nightseg.models.relight import DCENet

HEAVY_GFLOPS = 150.0  # above this: one timed run, warm-up at a small size only


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Return the forward FLOPs of `model` on `x`."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def time_forward(model: torch.nn.Module, x: torch.Tensor, mode: str) -> float:
    """Return the time (s) of one forward pass under no_grad or inference_mode."""
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with context():
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def bench_model(name: str, height: int, width: int, repeats: int | None) -> dict:
    """Return params, GFLOPs and the fastest latency (s) per setting of model `name` at height x width.

    The settings are interleaved (one run of each per round) and the minimum over rounds is kept: on a
    shared machine that compares them under the same load and takes the least disturbed run.
    """
    model = DCENet().eval() if name == "zero_dce" else build_segmenter(name).eval()
    x = torch.rand(1, 3, height, width)
    params = sum(p.numel() for p in model.parameters())
    gflops = count_flops(model, x) / 1e9
    heavy = gflops > HEAVY_GFLOPS
    n = repeats or (1 if heavy else 3)
    fused = fuse_batchnorm(model)
    last = torch.channels_last
    settings = {  # label: (model, input, grad mode)
        "no_grad": (model, x, "no_grad"),
        "inference_mode": (model, x, "inference_mode"),
        "+channels_last": (
            copy.deepcopy(model).to(memory_format=last),
            x.contiguous(memory_format=last),
            "inference_mode",
        ),
        "+fused_bn": (fused, x, "inference_mode"),
        "+both": (
            copy.deepcopy(fused).to(memory_format=last),
            x.contiguous(memory_format=last),
            "inference_mode",
        ),
    }
    for net, inp, mode in settings.values():  # warm-up (at 1/16 of the pixels for heavy models)
        time_forward(net, inp[..., : height // 4, : width // 4] if heavy else inp, mode)
    times: dict[str, list[float]] = {label: [] for label in settings}
    for _ in range(n):
        for label, (net, inp, mode) in settings.items():
            times[label].append(time_forward(net, inp, mode))
    row = {"name": name, "params_m": params / 1e6, "gflops": gflops, "repeats": n, "load": os.getloadavg()[0]}
    row.update({label: min(t) for label, t in times.items()})
    print(
        f"  {name:20s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k in settings), file=sys.stderr
    )
    return row


def models_table(names: list[str], height: int, width: int, repeats: int | None) -> None:
    print(
        f"\n| model | params (M) | GFLOPs @{width}x{height} | no_grad (s) | inference_mode | "
        "+channels_last | +fused BN | +both | best vs no_grad | runs | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = bench_model(name, height, width, repeats)
        best = min(r["inference_mode"], r["+channels_last"], r["+fused_bn"], r["+both"])
        print(
            f"| {name} | {r['params_m']:.2f} | {r['gflops']:.1f} | {r['no_grad']:.3f} | {r['inference_mode']:.3f} | "
            f"{r['+channels_last']:.3f} | {r['+fused_bn']:.3f} | {r['+both']:.3f} | "
            f"{(1 - best / r['no_grad']) * 100:+.0f}% | {r['repeats']} | {r['load']:.1f} |",
            flush=True,
        )


def train_step_table(
    names: list[str], batch: int = 4, height: int = 128, width: int = 256, steps: int = 8
) -> None:
    """Print wall time (median, min) and CPU time / threads of one SGD step per model.

    The models take turns (one step each per round), so they see the same load.
    """
    threads = torch.get_num_threads()
    print(
        f"\n| model | params (M) | step wall median (s) | step wall min (s) | step CPU time / {threads} threads (s) "
        f"|  (batch {batch}, {width}x{height}, SGD + cross entropy; load avg {os.getloadavg()[0]:.1f})"
    )
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    x = torch.rand(batch, 3, height, width)
    y = torch.randint(0, 19, (batch, height, width))
    runs = {}
    for name in names:
        model = build_segmenter(name).train()
        runs[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), [], [])
    for step in range(steps + 1):
        for model, optimizer, walls, cpus in runs.values():
            start, cpu = time.perf_counter(), time.process_time()
            loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 1:  # the first step is a warm-up
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
    for name, (model, _, walls, cpus) in runs.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"| {name} | {params:.2f} | {statistics.median(walls):.3f} | {min(walls):.3f} | "
            f"{statistics.median(cpus) / threads:.3f} |",
            flush=True,
        )


CROSS_ATTENTION_CASE = """
import resource, sys, time, torch
from nightseg.models import CrossAttention
torch.set_num_threads({threads})
c, mode, chunk = {channels}, "{mode}", {chunk}
m = CrossAttention(c, chunk_size=chunk)
with torch.no_grad():
    m.alpha.fill_(0.1)
night, day = torch.randn(1, c, 128, 256), torch.randn(1, c, 128, 256)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "inference":
    with torch.inference_mode():
        m(night, day)
else:
    night.requires_grad_(True)
    m(night, day).square().mean().backward()
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(f"{{peak:.0f}} {{time.perf_counter() - start:.1f}}")
"""


def cross_attention_table(threads: int, cases: list[tuple[int, str, str]]) -> None:
    print(
        "\n| channels C (Q/K: C/8) | mode | query chunk | peak memory growth (MiB) | time (s) | full N x N map (MiB) |"
    )
    print("|---|---|---|---|---|---|")
    n = 128 * 256
    for channels, mode, chunk in cases:
        code = CROSS_ATTENTION_CASE.format(threads=threads, channels=channels, mode=mode, chunk=chunk)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        label = "auto" if chunk == "None" else chunk
        print(
            f"| {channels} | {mode} | {label} | {out[0]} | {out[1]} | {n * n * 4 / 2**20:.0f} |", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=",".join([*list_segmenters(), "zero_dce"]), help="comma-separated names"
    )
    parser.add_argument("--only", choices=["models", "train-step", "cross-attention"], help="run one section")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="timed rounds per model (default 3, 1 for heavy models)")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if args.only in (None, "train-step"):
        train_step_table(["pspnet_nano", "pspnet_tiny", "pspnet_r18", "lraspp_mobilenetv3", "segformer_b0"])
    if args.only in (None, "cross-attention"):
        cross_attention_table(
            args.threads,
            [
                (2048, "inference", "None"),
                (2048, "training", "None"),
                (512, "inference", "None"),
                (512, "training", "None"),
            ],
        )
    if args.only in (None, "models"):
        models_table(args.models.split(","), args.height, args.width, args.repeats)


if __name__ == "__main__":
    main()
