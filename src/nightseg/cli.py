"""`nightseg <command>`: the command-line entry point.

Each command lives in its own module under `nightseg.commands`, which exposes
``register(subparsers, common)``: it adds its parser (with ``parents=[common]``) and sets
``func=<callable taking the parsed args and returning an exit code>``. Commands are imported lazily
only for the command being run, so ``nightseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nightseg import __version__
from nightseg.core.errors import TrainingInterrupted, UserError

# command name -> module under nightseg.commands; one line per command.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "ULCA end to end on synthetic day/night scenes (CPU, minutes)"),
    "eval": ("eval_folder", "score a folder of already-written prediction PNGs (no model; see evaluate)"),
    "relight": ("relight", "train or apply the Zero-DCE relighting network"),
    "data": ("data", "check a dataset copy: counts, unmatched files, label values, sizes"),
    "train": ("train", "train a model from a YAML recipe"),
    "synth": ("synth", "generate the synthetic day/night street-scene benchmark"),
    "predict": ("predict", "segment images, folders, globs and videos with a checkpoint"),
    "evaluate": ("evaluate", "run a checkpoint over a labelled dataset split and score it (report + plots)"),
    "submit": ("submit", "pack predictions into a benchmark submission zip"),
    "export": ("export", "export a checkpoint to ONNX (checked against PyTorch)"),
    "translate": ("translate", "train or apply a day<->night CycleGAN translator (See Clearer at Night)"),
    "nightlab": ("nightlab", "NightLab: hard classes, region model, RDN/HDM, merge"),
    "import": ("import_model", "convert a published checkpoint (Hugging Face, smp, mmsegmentation) to NightSeg"),
    "serve": ("serve", "a local web app (Gradio) to look at night predictions"),
}

log = logging.getLogger("nightseg")


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return common


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser; only the `only` command's module is imported and fully registered."""
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="nightseg",
        description="Semantic segmentation of driving scenes at night.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"nightseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == only:
            mod = importlib.import_module(f"nightseg.commands.{module}")
            mod.register(subparsers, common)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def os_error_message(exc: OSError) -> str:
    """Return a one-line message for a file-system error: the path, the reason and what to check."""
    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}; check that the path exists, is writable and the disk has space (--debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 failed check, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    try:
        parser = build_parser(only=command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0 if command is None else 2
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except OSError as exc:  # a path the user gave cannot be read or written (missing, permissions, disk full)
        if debug:
            raise
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return UserError.exit_code
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return TrainingInterrupted.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
