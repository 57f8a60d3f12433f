"""NightSeg: semantic segmentation of driving scenes at night."""

__version__ = "0.1.0"
