"""`nightseg train`: train a model from a YAML recipe (see `nightseg.core.config` and `nightseg.engine`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("nightseg")

EPILOG = """\
Overrides are dotted KEY=VALUE pairs (values parsed as YAML), e.g.
  nightseg train --config configs/cpu/supervised_cityscapes.yaml data.root=data/synthetic train.max_steps=200

The run folder (--out, default runs/<recipe>) receives config.yaml, checkpoints/{last,best}.safetensors,
state/ (for --resume), logs/{tensorboard,csv,images}/ and metrics.json. SIGTERM or Ctrl-C stops at the
next step boundary and saves the state (exit code 130); run the same command with --resume to continue.
A folder that already holds a state is only continued with --resume.

examples:
  nightseg train --config configs/supervised_cityscapes.yaml data.root=/data --out runs/source_only
  nightseg train --out runs/source_only --resume            # continue, using runs/source_only/config.yaml
  nightseg train --config configs/supervised_joint.yaml train.devices=4 train.num_nodes=2
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `train` command."""
    p = subparsers.add_parser(
        "train",
        parents=[common],
        help="train a model from a YAML recipe",
        description="Train a segmentation model from a YAML recipe (configs/*.yaml) on Lightning: "
        "validation on the target-domain val set, TensorBoard/CSV logs, safetensors checkpoints, exact resume.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="YAML", help="recipe file (optional with --resume: the run's config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.max_steps=200")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<recipe>)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its saved state")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; return 0 when finished, 130 when stopped early by SIGTERM/Ctrl-C (state saved)."""
    from nightseg.core.config import load_config
    from nightseg.core.errors import UserError
    from nightseg.engine import env_rank, train

    if args.config is None:
        if not (args.resume and args.out):
            raise UserError("nightseg train: --config YAML is required (or --resume --out RUN_DIR to continue a run)")
        config_path = Path(args.out) / "config.yaml"
        if not config_path.is_file():
            raise UserError(f"{config_path}: not found; give --config YAML to start this run")
    else:
        config_path = Path(args.config)
    cfg = load_config(config_path, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.recipe
    metrics = train(cfg, out, resume=args.resume)
    if env_rank() != 0:  # a DDP worker process: rank 0 reports
        return 0 if metrics["finished"] else 130
    if not metrics["finished"]:
        print(f"stopped at step {metrics['step']} of {metrics['max_steps']}; continue with --resume --out {out}")
        return 130
    val = metrics.get("val") or {}
    if val.get("mIoU") is not None:
        mef1 = val.get("mEF1")
        print(f"{cfg.recipe}: step {metrics['step']}  val mIoU {100 * val['mIoU']:.2f}"
              + (f"  mEF1 {100 * mef1:.2f}" if mef1 is not None else "") + f"  -> {out}")
    else:
        print(f"{cfg.recipe}: step {metrics['step']} -> {out}")
    return 0
