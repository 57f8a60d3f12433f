"""Figure of a checkpoint's prediction on the real Dark Zurich night frame: input | relit | prediction overlay.

    .venv/bin/python bench/real_frame_figure.py CKPT --out docs/images/real_dark_zurich_prediction.png \
        [--size 540x960] [--relight W] [--frame PATH] [--device cpu]

The frame is ``../shared/realdata/dark_zurich_pair/GP010375_frame_000036_rgb.png`` (1920x1080, CC BY-NC
4.0, not copied into the repository). It is resized to ``--size`` before inference (a model trained on
small synthetic frames sees objects at a similar scale then). The middle panel shows what the model sees
after its own relighting step (ULCA checkpoints bundle Zero-DCE); for a model without one it shows the
Zero-DCE relit frame (``--relight W``, else the official ``Epoch99.pth`` from ../shared/realdata when
present) for comparison and says that the model does not use it. The prediction panel lists the classes
it found with their share of the pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nightseg.core.classes import CLASS_NAMES, PALETTE
from nightseg.core.io import read_image
from nightseg.evaluation.report import save_figure
from nightseg.inference import Predictor, colorize_labels, overlay, parse_size

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
FRAME = REALDATA / "dark_zurich_pair" / "GP010375_frame_000036_rgb.png"
OFFICIAL_DCE = REALDATA / "zero_dce" / "Epoch99.pth"


def make_figure(ckpt: Path, out: Path, frame: Path = FRAME, size: tuple[int, int] = (540, 960),
                relight: Path | None = None, device: str = "cpu") -> dict:
    """Draw the three panels into `out` (PNG, atomic) and return a summary of the prediction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from nightseg.models import relight as zero_dce

    image = np.array(Image.fromarray(read_image(frame)).resize((size[1], size[0]), Image.BILINEAR))
    seg = Predictor.from_checkpoint(ckpt, device=device)
    own_relight = getattr(seg.net, "relight", None) is not None
    if own_relight:
        relit, relit_title = seg.relit(image), "relit by the model's Zero-DCE (what it segments)"
    else:
        weights = relight or (OFFICIAL_DCE if OFFICIAL_DCE.is_file() else None)
        if weights is not None:
            relit = zero_dce.relight(zero_dce.load_dce_weights(weights), image)
            relit_title = f"Zero-DCE relit ({Path(weights).name}); this model does not relight"
        else:
            relit, relit_title = image, "no relighting weights available"
    pred = seg.predict(image, return_probs=False)
    labels = pred.labels
    counts = np.bincount(labels.reshape(-1), minlength=seg.num_classes)[: seg.num_classes]
    shares = {CLASS_NAMES[i] if seg.num_classes == len(CLASS_NAMES) else str(i): counts[i] / labels.size
              for i in np.argsort(-counts) if counts[i] > 0}
    fig = Figure(figsize=(18, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    meta = seg.metadata
    model = (meta.get("model") or {}).get("name", "?")
    titles = [f"input: real Dark Zurich night frame ({frame.name})", relit_title,
              f"prediction overlay ({model}, mean confidence {float(pred.confidence.mean()):.2f})"]
    panels = [image, relit, overlay(image, colorize_labels(labels, seg.num_classes), 0.55)]
    for ax, panel, title in zip(axes, panels, titles):
        ax.imshow(panel)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if seg.num_classes == len(CLASS_NAMES):
        handles = [Patch(color=PALETTE[CLASS_NAMES.index(n)] / 255.0, label=f"{n} {100 * s:.0f}%")
                   for n, s in list(shares.items())[:10]]
        axes[2].legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.32), ncol=5, fontsize=8,
                       frameon=False)
    recipe = meta.get("recipe") or meta.get("method") or ""
    step = meta.get("step")
    fig.suptitle(f"{ckpt.name}: {model}" + (f", {recipe}" if recipe else "") + (f", step {step}" if step is not None else ""),
                 fontsize=11)
    save_figure(fig, out)
    return {"out": str(out), "size": list(size), "own_relight": own_relight, "class_shares": shares}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, metavar="CKPT")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frame", type=Path, default=FRAME)
    parser.add_argument("--size", default="540x960", help="HxW the frame is resized to before inference")
    parser.add_argument("--relight", type=Path, help="Zero-DCE weights for the middle panel (models without relighting)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not args.frame.is_file():
        print(f"error: {args.frame}: frame not found (../shared/realdata is needed)", file=sys.stderr)
        return 2
    info = make_figure(args.checkpoint, args.out, args.frame, parse_size(args.size, "--size"), args.relight, args.device)
    top = ", ".join(f"{k} {100 * v:.1f}%" for k, v in list(info["class_shares"].items())[:6])
    print(f"wrote {info['out']}; predicted classes: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
