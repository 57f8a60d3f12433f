"""NightSeg `predict` on an imported SegFormer vs transformers' own inference, same weights, same image.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_pretrained.py [--variants b0 b2] [--threads 1] [--repeats 3]

For each MiT variant: a SegformerForSemanticSegmentation with random weights (Cityscapes' 19 classes) is
saved in transformers' format and imported with `nightseg import`'s converter; then one 1024x2048 RGB
image (a real Cityscapes val frame from ../shared/realdata when present, else random) is segmented

- by transformers: uint8 -> float, ImageNet normalisation, ``model(pixel_values)``, bilinear upsampling of
  the stride-4 logits to 1024x2048, argmax (what ``post_process_semantic_segmentation`` does), and
- by NightSeg: ``Predictor.from_checkpoint(imported, sliding=False).predict_batch([image],
  return_confidence=False)`` (the same whole-image forward; BatchNorm folded, channels_last).

Both in ``torch.inference_mode`` with the same thread count. Prints the median / min seconds per image and
whether the two label maps agree; the sliding-window setting the source models were scored with
(1024x1024 windows every 768 px: three windows) is timed for NightSeg too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nightseg.core.io import read_image
from nightseg.inference import Predictor, SlidingWindow
from nightseg.pipelines.pretrained import import_model

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "cityscapes_samples" / "fullres_val_no_gt"
H, W = 1024, 2048


def image() -> tuple[np.ndarray, str]:
    """Return a 1024x2048 RGB uint8 image and where it came from."""
    files = sorted(REALDATA.glob("*.png")) if REALDATA.is_dir() else []
    if files:
        img = read_image(files[0])
        if img.shape[:2] == (H, W):
            return img, f"Cityscapes val {files[0].name}"
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8), "random 1024x2048"


SHAPES = {"b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768)}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def bench_variant(variant: str, img: np.ndarray, repeats: int, sliding_too: bool = True) -> str:
    """Return the Markdown table row of one MiT variant."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    hidden, depths, decoder = SHAPES[variant]
    config = SegformerConfig(num_labels=19, hidden_sizes=hidden, depths=depths, decoder_hidden_size=decoder)
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config).eval()

    @torch.inference_mode()
    def reference() -> np.ndarray:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div_(255.0)
        logits = model(pixel_values=(x - MEAN) / STD).logits
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].to(torch.uint8).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "hf")
        ckpt, _ = import_model(Path(tmp) / "hf", Path(tmp) / "imported.safetensors")
        whole = Predictor.from_checkpoint(ckpt, sliding=False)
        sliding = Predictor.from_checkpoint(ckpt, sliding=SlidingWindow((1024, 1024), (768, 768), "uniform"))
    runs = {"ref": reference, "ours": lambda: whole.predict_batch([img], return_confidence=False)[0].labels,
            "slide": lambda: sliding.predict_batch([img], return_confidence=False)[0].labels}
    if not sliding_too:
        del runs["slide"]
    times: dict[str, list[float]] = {k: [] for k in runs}
    results = {k: fn() for k, fn in runs.items()}  # warm-up (allocator, oneDNN kernels)
    for _ in range(repeats):  # interleaved, so that a change in machine load hits all three alike
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    t_ref, t_ours, t_slide = times["ref"], times["ours"], times.get("slide")
    labels_ref, pred = results["ref"], results["ours"]
    agree = float((labels_ref == pred).mean())
    med_ref, med_ours = statistics.median(t_ref), statistics.median(t_ours)
    slide = f"{statistics.median(t_slide):.2f}" if t_slide else "not run"
    return (f"| SegFormer-{variant.upper()} | {med_ref:.2f} (min {min(t_ref):.2f}) | {med_ours:.2f} "
            f"(min {min(t_ours):.2f}) | {med_ours / med_ref:.2f} | {100 * agree:.3f} % | {slide} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b2"], choices=sorted(SHAPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sliding", action="store_true", help="skip the sliding-window timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    img, source = image()
    print(f"image: {source}; threads: {args.threads}; torch {torch.__version__}")
    print("| model | transformers (s) | NightSeg whole image (s) | NightSeg / transformers | same labels | "
          "NightSeg sliding 1024/768 (s) |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        print(bench_variant(variant, img, args.repeats, not args.no_sliding), flush=True)


if __name__ == "__main__":
    main()
