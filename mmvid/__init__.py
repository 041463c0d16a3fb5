"""mmvid: multimodal video classification with Multimodal Mixup (MM) and Balanced MM (B-MM)."""

__version__ = "0.1.0"
