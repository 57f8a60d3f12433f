"""`nightseg serve [CKPT ...]`: a local web app to look at night predictions (argument parsing; the work is
`nightseg.pipelines.serve`, which imports Gradio only when the command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nightseg.pipelines.serve import ServeConfig, serve
from nightseg.pipelines.serve_handlers import DEFAULT_MAX_UPLOAD_MB


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the `serve` command."""
    p = subparsers.add_parser("serve", parents=[common], help="a local web app (Gradio) to look at night predictions",
                              description='Start a local web page to look at predictions; needs pip install -e ".[app]".')
    p.add_argument("checkpoints", nargs="*", metavar="CKPT",
                   help="checkpoints offered in the page (.safetensors with its .json, or exported .onnx)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--images", type=Path, metavar="DIR", help="a folder whose images and videos the page offers")
    p.add_argument("--relight", dest="relight_weights", metavar="W",
                   help="Zero-DCE weights for the relight toggle when a checkpoint bundles none "
                        "(Epoch99.pth / .safetensors; default $NIGHTSEG_RELIGHT_WEIGHTS)")
    p.add_argument("--night2day", metavar="CKPT",
                   help="a `nightseg translate train` checkpoint for the night->day toggle (See Clearer at Night)")
    p.add_argument("--tta", default="flip", metavar="SPEC", help="what the TTA toggle runs (default flip)")
    p.add_argument("--window", default="512x512", help="sliding window HxW of the sliding toggle (default 512x512)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload accepted (default {DEFAULT_MAX_UPLOAD_MB:g} MB)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="requests run at once (default 2; one model still runs one request at a time)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`nightseg serve`: see `nightseg.pipelines.serve`."""
    config = ServeConfig(
        checkpoints=[str(c) for c in args.checkpoints], host=args.host, port=args.port, images=args.images,
        relight_weights=args.relight_weights, night2day=args.night2day, tta=args.tta, window=args.window,
        device=args.device, max_upload_mb=args.max_upload_mb, concurrency=max(1, args.concurrency),
    )
    serve(config)
    return 0
