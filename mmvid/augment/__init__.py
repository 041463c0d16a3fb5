"""AUGMENTS: none, mixup, mm, bmm, msmix. Imported explicitly to register them."""

from mmvid.augment import bmm, mixup, msmix  # noqa: F401
