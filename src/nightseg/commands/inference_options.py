"""The command-line options that say how a network runs, shared by `nightseg predict` and `nightseg evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from nightseg.core.errors import UserError
from nightseg.inference import BACKENDS, BLENDS, Predictor, SlidingWindow


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """Add the options that say how the network runs (shared by predict and evaluate)."""
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="run the network with PyTorch or onnxruntime")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--relight", nargs="?", const=True, default=None, metavar="W",
                   help="relight with Zero-DCE first: the checkpoint's own net, else $NIGHTSEG_RELIGHT_WEIGHTS, "
                        "or the weights W (Epoch99.pth / .safetensors / official); default: only if the checkpoint bundles one")
    p.add_argument("--no-relight", action="store_true", help="never relight, even if the checkpoint bundles a net")
    p.add_argument("--night2day", type=Path, metavar="CKPT",
                   help="translate each image night->day first with a `nightseg translate train` generator (See Clearer at Night)")
    p.add_argument("--sliding", action="store_true", help="sliding-window instead of whole-image inference")
    p.add_argument("--whole", action="store_true",
                   help="whole-image inference even for an imported model scored by sliding window (its metadata)")
    p.add_argument("--window", help="sliding window HxW (default 512x512)")
    p.add_argument("--stride", help="sliding stride HxW (default 2/3 of the window)")
    p.add_argument("--blend", choices=BLENDS, default="gaussian", help="how overlapping windows are blended")
    p.add_argument("--tta", metavar="SPEC", help="test-time augmentation, e.g. flip or flip,0.75,1,1.25")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images)")
    p.add_argument("--invalid-threshold", type=float, default=0.5,
                   help="confidence below which a pixel is declared invalid (default 0.5)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable inputs instead of stopping")
    p.add_argument("--workers", type=int, default=2, help="threads decoding and writing files (default 2)")


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    """Return the `Predictor` described by the inference options shared by predict and evaluate."""
    if args.relight is not None and args.no_relight:
        raise UserError("--relight and --no-relight: choose one")
    relight = False if args.no_relight else args.relight
    if args.sliding and args.whole:
        raise UserError("--sliding and --whole: choose one")
    # None: the checkpoint's own setting (imported models carry how their source scored them)
    sliding = SlidingWindow.parse(args.window, args.stride, args.blend) if args.sliding else (False if args.whole else None)
    if not args.sliding and (args.window or args.stride):
        raise UserError("--window/--stride: only used with --sliding")
    return Predictor.from_checkpoint(args.checkpoint, device=args.device, relight=relight, tta=args.tta,
                                     sliding=sliding, backend=args.backend, night2day=args.night2day)
