"""Cost of cross attention's Q/K width (issue 21, item 5): ``qk_channels: full`` (C, the paper's Eq. 2) vs
``reduced`` (C/8, SAGAN), per module: parameters, forward + backward FLOPs (``FlopCounterMode``) and the
median wall-clock time of a forward + backward on the CPU.

    python bench/cross_attention_cost.py            # the synthetic benchmark's size and PSPNet-R101's at 960

Cases: ``pspnet_tiny`` features (C = 256) of the benchmark's 128x192 night crops at 1/8 (16x24 = 384
positions, batch 2), and PSPNet-R101 features (C = 2048) of a 960x960 crop at 1/8 (120x120 = 14 400
positions, batch 1; FLOPs only, on the meta device). One torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from nightseg.models import CrossAttention


def cost(channels: int, h: int, w: int, batch: int, qk: str, repeats: int) -> dict[str, float]:
    """Return {"params", "gflop", "ms"} of one forward + backward of `CrossAttention` (ms: None when repeats=0)."""
    device = "cpu" if repeats else "meta"
    torch.manual_seed(0)
    with torch.device(device):
        module = CrossAttention(channels, qk_channels=qk)
        night, day = torch.randn(batch, channels, h, w), torch.randn(batch, channels, h, w)
    with torch.no_grad():
        module.alpha.fill_(0.5)  # alpha = 0 would leave Q/K/V without gradient
    params = sum(p.numel() for p in module.parameters())
    with FlopCounterMode(display=False) as counter:
        module(night, day).sum().backward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(night, day).sum().backward()
        times.append(1000 * (time.perf_counter() - start))
    return {"params": params, "gflop": counter.get_total_flops() / 1e9,
            "ms": statistics.median(times) if times else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| features | qk_channels | parameters | GFLOP (fwd + bwd) | CPU ms (median, 1 thread) |")
    print("|---|---|---|---|---|")
    for title, (c, h, w, b, repeats) in {"pspnet_tiny, 16x24, batch 2": (256, 16, 24, 2, args.repeats),
                                         "pspnet_r101, 120x120, batch 1": (2048, 120, 120, 1, 0)}.items():
        for qk in ("full", "reduced"):
            r = cost(c, h, w, b, qk, repeats)
            ms = "-" if r["ms"] is None else f"{r['ms']:.1f}"
            print(f"| {title} | {qk} | {r['params'] / 1e6:.3f} M | {r['gflop']:.2f} | {ms} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
