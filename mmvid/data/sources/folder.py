"""Any data set as ``<root>/<class>/<video>`` folders; optional lists of ``<class>/<video>`` lines.
Classes: the class folders holding at least one video, sorted by name."""

from __future__ import annotations

from pathlib import Path

from mmvid.data.sources.base import Source, source
from mmvid.data.sources.kinetics_sounds import KS_MMVID_PARAMS
from mmvid.data.sources.listing import folder_clips, require_dir

FOLDER_PARAMS = dict(KS_MMVID_PARAMS)


@source("folder")
def folder_source(root: Path | None = None, train_list: Path | None = None, test_list: Path | None = None,
                  seed: int = 0, **_) -> Source:
    root = require_dir(root, "<root>/<class>/<video> folders")
    return folder_clips("folder", root, train_list, test_list, seed, FOLDER_PARAMS)
