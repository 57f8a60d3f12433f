"""Colour maps and overlays of label maps."""

from __future__ import annotations

import numpy as np

from nightseg.core.classes import NUM_CLASSES, PALETTE


def palette_for(num_classes: int) -> np.ndarray:
    """Return a (num_classes x 3) uint8 palette: the Cityscapes colours for 19 classes, else a fixed spread."""
    if num_classes == NUM_CLASSES:
        return PALETTE
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(num_classes, 3), dtype=np.uint8)


def colorize_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the HxWx3 colour image of a label map (255 and unknown ids black)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = palette_for(num_classes)
    return table[labels]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Return ``(1 - alpha) * image + alpha * color`` as uint8 (both HxWx3 uint8)."""
    out = image.astype(np.uint16) * round((1 - alpha) * 256) + color.astype(np.uint16) * round(alpha * 256)
    return (out >> 8).astype(np.uint8)
