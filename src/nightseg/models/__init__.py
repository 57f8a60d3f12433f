"""Segmentation networks, Zero-DCE relighting and cross attention."""

from nightseg.models.cross_attention import CrossAttention, CrossAttentionSegmenter
from nightseg.models.relight import DCENet, load_dce_weights, relight_image
from nightseg.models.segmenters import Segmenter, build_segmenter, fuse_batchnorm, list_segmenters

__all__ = [
    "CrossAttention",
    "CrossAttentionSegmenter",
    "DCENet",
    "Segmenter",
    "build_segmenter",
    "fuse_batchnorm",
    "list_segmenters",
    "load_dce_weights",
    "relight_image",
]
