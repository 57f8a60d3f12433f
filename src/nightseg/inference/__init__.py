"""Inference with a trained checkpoint: ``Predictor.from_checkpoint(path).predict(image)``.

`Predictor` (predictor.py) runs a network whole-image or by sliding window, with test-time augmentation,
batched; the network is an `InferenceNet` (network.py: relighting + segmenter rebuilt from a checkpoint)
or an `OnnxNet` (onnx.py: an exported file on onnxruntime; `export_onnx` writes one). video.py reads and
writes videos frame by frame; visualize.py colours label maps.
"""

from nightseg.inference.network import InferenceNet, load_inference_net
from nightseg.inference.onnx import OnnxNet, export_onnx
from nightseg.inference.predictor import (
    BACKENDS,
    BLENDS,
    TTA,
    Prediction,
    Predictor,
    SlidingWindow,
    blend_weight,
    parse_size,
    window_starts,
)
from nightseg.inference.visualize import colorize_labels, overlay, palette_for

__all__ = [
    "BACKENDS",
    "BLENDS",
    "TTA",
    "InferenceNet",
    "OnnxNet",
    "Prediction",
    "Predictor",
    "SlidingWindow",
    "blend_weight",
    "colorize_labels",
    "export_onnx",
    "load_inference_net",
    "overlay",
    "palette_for",
    "parse_size",
    "window_starts",
]
