"""Named bundles of prepare parameters per data set (``mmvid prepare DATASET --preset NAME``), over the source's
defaults; each reproduces the inputs of one reference implementation (docs/methods.md, "Reference protocol (data)")."""

from __future__ import annotations

from mmvid.data.sources.kinetics_sounds import KS_MMVID_PARAMS
from mmvid.errors import MmvidError

# CREMA-D's frames as the references read them: native 480 x 360, through OpenCV's quality-95 JPEG, decoded by
# PyAV, whose frames equal OpenCV's exactly (decord's differ after the first on CREMA-D's VP6: 0.1 grey levels on
# average, up to 33 at a few pixels; tests/reference/test_reference_inputs.py).
_CREMAD_NATIVE = dict(frame_size="short-side", image_size=360, frame_aspect=4 / 3, jpeg_quality=95, frame_anchor="start",
                      decoder="pyav")
PRESETS: dict[str, dict[str, dict]] = {
    "cremad": {
        "mmvid": {},
        # OGM-GE: one frame, the first of its 1-fps folder (video_preprocessing.py keeps frame k * int(fps));
        # the audio of the librosa it ran in 2022 (reflect padding, kaiser_best resampling of the 16 kHz wav).
        "ogm-ge": dict(_CREMAD_NATIVE, num_frames=1, frame_select="ogm-ge", stft_pad="reflect", resample="kaiser_best"),
        # Remix (Data Remixing): two frames, at 0 s and 1 s of a 1-fps folder; librosa >= 0.10's audio.
        "remix": dict(_CREMAD_NATIVE, num_frames=2, frame_select="remix"),
    },
    # the default is OGM-GE's (KS_PARAMS); mmvid's own inputs undo each of its settings
    "kinetics-sounds": {"ogm-ge": {}, "mmvid": dict(KS_MMVID_PARAMS, frame_select="uniform", frame_size="square",
                                                    frame_aspect=4 / 3, jpeg_quality=0, audio_feature="stft",
                                                    decoder="decord")},
}


def preset_params(dataset: str, preset: str | None) -> dict:
    """The prepare parameters ``--preset`` sets for ``dataset`` (over its source's defaults); one line when
    the data set has no such preset."""
    if preset is None:
        return {}
    known = PRESETS.get(dataset, {})
    if preset not in known:
        have = f"{dataset}'s presets: {', '.join(known)}" if known else f"{dataset} has no presets"
        raise MmvidError(f"--preset {preset!r} is not valid; {have}")
    return dict(known[preset])
