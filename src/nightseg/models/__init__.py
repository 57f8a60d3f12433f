"""Segmentation networks, Zero-DCE relighting and cross attention."""

from nightseg.models.cross_attention import CrossAttention
from nightseg.models.relight import DCENet
from nightseg.models.segmenters import Segmenter, build_segmenter, fuse_batchnorm, list_segmenters

__all__ = ["CrossAttention", "DCENet", "Segmenter", "build_segmenter", "fuse_batchnorm", "list_segmenters"]
