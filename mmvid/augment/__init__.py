"""AUGMENTS: none, mixup, mm, bmm (and msmix). Imported explicitly to register them."""

from mmvid.augment import bmm, mixup  # noqa: F401

try:  # added by the methods work; absent modules simply register nothing
    from mmvid.augment import msmix  # noqa: F401
except ImportError:
    pass
