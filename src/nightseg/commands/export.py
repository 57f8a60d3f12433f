"""`nightseg export CKPT --format onnx [--out F]`: write the inference network as ONNX.

The file holds the relighting step (when the checkpoint bundles one, or with ``--relight W``) and the
segmenter; input ``image`` [B,3,H,W] RGB in [0,1], output ``logits`` [B,C,H,W], height and width dynamic.
After writing, onnxruntime's outputs are compared with PyTorch's (max abs difference must be <= 1e-4).
``nightseg predict F.onnx ...`` and ``--backend onnx`` run it. NightLab checkpoints are refused with a
one-line error (exit 2): their region proposals are data-dependent (`nightseg.inference.onnx.check_exportable`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nightseg.core.errors import UserError
from nightseg.core.io import check_output_file
from nightseg.inference import load_inference_net, parse_size
from nightseg.inference.onnx import DEFAULT_OPSET, export_onnx
from nightseg.models.pretrained.reference import parse_hf

FORMATS = ("onnx",)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the `export` command."""
    p = subparsers.add_parser("export", parents=[common], help="export a checkpoint to ONNX (checked against PyTorch)")
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="model .safetensors (with its .json), or a published model: file, folder, hf:ORG/NAME")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="export format (onnx)")
    p.add_argument("--out", type=Path, help="file to write (default: CKPT with .onnx)")
    p.add_argument("--size", default="256x512", help="HxW of the example input used for tracing and the check")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {DEFAULT_OPSET})")
    p.add_argument("--static", action="store_true", help="fix height and width to --size")
    p.add_argument("--relight", nargs="?", const=True, default=None, metavar="W",
                   help="include Zero-DCE relighting (the checkpoint's own net, $NIGHTSEG_RELIGHT_WEIGHTS or W)")
    p.add_argument("--no-relight", action="store_true", help="leave out the checkpoint's relighting net")
    p.add_argument("--no-check", action="store_true", help="skip the PyTorch/onnxruntime comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`nightseg export`: write the file and print the parity result."""
    if args.relight is not None and args.no_relight:
        raise UserError("--relight and --no-relight: choose one")
    hub = parse_hf(args.checkpoint)  # hf:ORG/NAME[@REV] -> NAME.onnx in the current folder
    out = args.out or (Path(hub[0].split("/")[-1] + ".onnx") if hub else args.checkpoint.with_suffix(".onnx"))
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: ONNX files must end in .onnx")
    size = parse_size(args.size, "--size")
    check_output_file(out)
    net, _ = load_inference_net(args.checkpoint, False if args.no_relight else args.relight)
    info = export_onnx(net, out, size=size, opset=args.opset, dynamic=not args.static,
                       metadata={"checkpoint": str(args.checkpoint)}, check=not args.no_check)
    shape = "dynamic height/width" if info["dynamic"] else f"fixed {size[0]}x{size[1]}"
    parity = "" if info["max_abs_diff"] is None else f"; max |onnx - torch| = {info['max_abs_diff']:.2e}"
    print(f"wrote {out} (opset {info['opset']}, {shape}{parity})")
    return 0
