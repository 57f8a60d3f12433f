"""Cost of ULCA's night crop size (issue 21, item 6): the seed's 960x960 night/day crops fed to the network
as they are, against DANNet's code, which resizes each 960 crop to 512 before the network
(``data.target.out_size: [512, 512]``).

    python bench/ulca_crop_cost.py                       # pspnet_r101, batch 1, 960 vs 512, no real compute
    python bench/ulca_crop_cost.py --model pspnet_tiny --sizes 960 512 256

Method: the segmenter is built on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic) and
one forward + backward of a batch of one image is traced: ``torch.utils.flop_counter.FlopCounterMode``
counts the FLOPs and a ``saved_tensors_hooks`` pair adds up the bytes of every tensor autograd keeps for
the backward pass (the activation memory of a training forward; float32; parameters, gradients and
optimiser state are not included: they do not depend on the crop size). At batch 1 the batch-norm layers run
on their running statistics (training statistics of one 1x1 pooled map do not exist). Exact for the graph, so the
numbers do not depend on the machine or its load; the time of a step scales with the FLOPs on a given
device. Prints a Markdown table.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode


def trace(model_name: str, size: int, batch: int = 1) -> dict[str, float]:
    """Return {"gflop": forward+backward GFLOP, "saved_gib": GiB kept for backward} of one training pass."""
    from nightseg.models import build_segmenter

    with torch.device("meta"):
        model = build_segmenter(model_name, pretrained=False).train()
        if batch == 1:  # batch norm cannot train on one 1x1 pooled map (the pyramid pooling head): use its stats
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        x = torch.empty(batch, 3, size, size)
    saved = {"bytes": 0, "seen": set()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (id(t), tuple(t.shape))  # a tensor saved by two ops is stored once
        if key not in saved["seen"]:
            saved["seen"].add(key)
            saved["bytes"] += t.numel() * t.element_size()
        return t

    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(x)
        logits.float().mean().backward()
    return {"gflop": counter.get_total_flops() / 1e9, "saved_gib": saved["bytes"] / 2**30}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pspnet_r101")
    parser.add_argument("--sizes", type=int, nargs="+", default=[960, 512])
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    rows = {size: trace(args.model, size, args.batch) for size in args.sizes}
    base = rows[args.sizes[0]]
    print(f"{args.model}, batch {args.batch}, one forward + backward (meta-device trace)\n")
    print(f"| input | GFLOP | x of {args.sizes[0]} | activations kept for backward (GiB) | x of {args.sizes[0]} |")
    print("|---|---|---|---|---|")
    for size, r in rows.items():
        print(f"| {size}x{size} | {r['gflop']:.0f} | {r['gflop'] / base['gflop']:.2f} | {r['saved_gib']:.2f} "
              f"| {r['saved_gib'] / base['saved_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
