"""Segmentation networks, Zero-DCE relighting and cross attention.

`build_segmenter(name)` builds a network by name; `nightseg.models.registry` rebuilds any network (EGNet and
NightLab included) from a recipe's ``model:`` config or a checkpoint's metadata. Relighting is
`nightseg.models.relight.relight`.
"""

from nightseg.models.cross_attention import CrossAttention, CrossAttentionSegmenter
from nightseg.models.registry import build_model, model_from_config
from nightseg.models.relight import DCENet, load_dce_weights
from nightseg.models.segmenters import Segmenter, build_segmenter, fuse_batchnorm, list_segmenters

__all__ = [
    "CrossAttention",
    "CrossAttentionSegmenter",
    "DCENet",
    "Segmenter",
    "build_model",
    "build_segmenter",
    "fuse_batchnorm",
    "list_segmenters",
    "load_dce_weights",
    "model_from_config",
]
