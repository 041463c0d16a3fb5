"""Dataset sources: each turns a data set's own layout into a list of clips with labels and splits, and is
registered by name in :data:`SOURCES` (``mmvid prepare NAME``). A source never decodes; ``mmvid.data.prepare``
does that for every source the same way.

=================  ==========================================================================
``cremad``         ``<root>/VideoFlash/*.flv`` (+ ``AudioWAV/*.wav``, used when present);
                   split: OGM-GE ``name,LABEL`` CSVs, else stratified ~9:1 from ``--seed``.
``kinetics-sounds`` mp4/mkv/webm/avi anywhere under ``<root>``; split: OGM-GE ``id,10,label_idx``
                   lists plus a class-name file next to them, else ``<root>/<class>/<clip>``.
``ave``             ``<root>/AVE/<VideoID>.mp4`` and the official ``<root>/{train,val,test}Set.txt``
                   (``Category&VideoID&Quality&StartTime&EndTime``); valSet is mmvid's val split.
``vggsound``       the official ``vggsound.csv`` (``youtube_id,start_seconds,label,split``, no header) and
                   clips anywhere under ``<root>`` named ``<id>_<start:06d>`` (or the other common names).
``ucf101``         ``<root>/UCF-101/<Class>/v_*.avi`` and ``<root>/ucfTrainTestlist/``;
                   precomputed frames in ``<root>/{frames,rawframes}/[<Class>/]<v_name>/``.
``folder``         ``<root>/<class>/<video>``; optional lists of ``<class>/<video>`` lines.
                   Classes: the class folders holding at least one video, sorted by name.
``demo``,          generated: real mp4 files written from a seed under ``<workspace>/raw/<name>``
``demo-shortcut``, (:mod:`mmvid.data.sources.demo`, :mod:`mmvid.data.sources.proving`).
``proving``
=================  ==========================================================================

One module per family (``cremad``, ``kinetics_sounds``, ``ave``, ``vggsound``, ``ucf101``, ``folder``, ``demo``,
``proving``), each registering its sources with ``@source(NAME)`` when this package imports it; what they share
is in :mod:`mmvid.data.sources.base` (the records and the registry) and :mod:`mmvid.data.sources.listing`.
Sources only list files; list entries without a file and files in no list are reported in
``Source.notes`` / ``Source.excluded`` (and in the prepare report), never silently dropped; the list lines
without a file also go to ``<cache>.missing.txt`` (``Source.missing``). Class lists that are names are
pinned in ``mmvid.data.class_lists``. Dataset defaults (``Source.params``) follow the data protocol of the
reference implementations; ``--preset`` bundles are in :mod:`mmvid.data.sources.presets`.

A plug-in adds a source the same way::

    from mmvid.data.sources import ClipSpec, Source, source

    @source("csv")
    def csv_source(root=None, **kw) -> Source: ...
"""

from mmvid.data.sources import ave, cremad, demo, folder, kinetics_sounds, proving, ucf101, vggsound  # noqa: F401
from mmvid.data.sources.base import (
    GENERATED,
    SOURCES,
    ClipSpec,
    IntensityScale,
    Source,
    SourceFn,
    get_source,
    missing_manifest,
    source,
    stratified_split,
    write_missing_manifest,
)
from mmvid.data.sources.presets import PRESETS, preset_params

__all__ = ["GENERATED", "PRESETS", "SOURCES", "ClipSpec", "IntensityScale", "Source", "SourceFn", "get_source",
           "missing_manifest", "preset_params", "source", "stratified_split", "write_missing_manifest"]
