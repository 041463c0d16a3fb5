"""Dataset sources on the real layouts in ../shared/data: labels, splits, reported exclusions, bad roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmvid.data.sources import get_source
from mmvid.data.sources.listing import read_lines
from mmvid.errors import MmvidError

CREMAD_NAMES = [f"1001_DFA_{e}_XX" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")]


def _by_name(src):
    return {c.name: c for c in src.clips}


def test_cremad_with_ogm_ge_fixture_lists(shared_data):
    root = shared_data / "crema_d"
    src = get_source("cremad")(root=root, train_list=root / "splits_fixture/train.csv",
                               test_list=root / "splits_fixture/test.csv")
    # class order = the OGM-GE stat.csv (BOM + CRLF in the file)
    assert src.class_names == read_lines(root / "splits_fixture/stat.csv") == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    clips = _by_name(src)
    assert sorted(clips) == CREMAD_NAMES
    assert {n for n, c in clips.items() if c.split == "test"} == {"1001_DFA_HAP_XX", "1001_DFA_SAD_XX"}
    for name, c in clips.items():
        assert src.class_names[c.label] == name.split("_")[2]
        assert c.video == root / "VideoFlash" / f"{name}.flv"
        assert c.audio == root / "AudioWAV" / f"{name}.wav"  # AudioWAV is used when present
    assert src.params["num_frames"] == 2 and src.params["sample_rate"] == 22050 and src.params["hop"] == 353
    assert src.excluded == []


def test_cremad_full_lists_report_missing_clips(shared_data):
    root = shared_data / "crema_d"
    src = get_source("cremad")(root=root, train_list=root / "splits_ogm_ge_full/train.csv",
                               test_list=root / "splits_ogm_ge_full/test.csv")
    assert len(src.clips) == 6
    assert len(src.excluded) == 6698 + 744 - 6  # every listed clip without a flv, one entry each
    assert any("7436 clips of the split lists have no VideoFlash" in n for n in src.notes)
    assert {c.name for c in src.clips if c.split == "test"} == {"1001_DFA_HAP_XX", "1001_DFA_SAD_XX"}


def test_cremad_seeded_split_is_stratified_and_deterministic(shared_data, tmp_path):
    # 20 clips per class (symlinks to the 6 real flv files) so a 9:1 split has 2 test clips per class
    vf = tmp_path / "VideoFlash"
    vf.mkdir()
    for name in CREMAD_NAMES:
        for actor in range(1001, 1021):
            (vf / f"{name.replace('1001', str(actor))}.flv").symlink_to(shared_data / "crema_d/VideoFlash" / f"{name}.flv")
    a = get_source("cremad")(root=tmp_path, seed=3)
    b = get_source("cremad")(root=tmp_path, seed=3)
    c = get_source("cremad")(root=tmp_path, seed=4)
    split = lambda s: {x.name: x.split for x in s.clips}  # noqa: E731
    assert split(a) == split(b) != split(c)
    for k in range(6):
        assert sum(x.split == "test" for x in a.clips if x.label == k) == 2
    assert all(x.audio is None for x in a.clips)  # no AudioWAV: audio comes from the flv
    assert any("AudioWAV" in n for n in a.notes)


@pytest.mark.parametrize("dataset", ["cremad", "ucf101", "kinetics-sounds", "folder"])
def test_wrong_root_is_one_clear_error(dataset, tmp_path):
    with pytest.raises(MmvidError, match="expected"):
        get_source(dataset)(root=tmp_path)
    with pytest.raises(MmvidError, match="not a folder"):
        get_source(dataset)(root=tmp_path / "nope")


def test_cremad_bad_list_line_names_file_and_line(shared_data, tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("1001_DFA_ANG_XX,ANG\n1001_DFA_DIS_XX,ANGRY\n")
    with pytest.raises(MmvidError, match=r"train.csv:2: expected `clip,LABEL`"):
        get_source("cremad")(root=shared_data / "crema_d", train_list=bad, test_list=bad)
    with pytest.raises(MmvidError, match="both --train-list and --test-list"):
        get_source("cremad")(root=shared_data / "crema_d", train_list=bad)


@pytest.mark.parametrize("split,n_train,n_test", [("1", 9537, 3783), ("2", 9586, 3734), ("3", 9624, 3696)])
def test_ucf101_official_lists(shared_data, split, n_train, n_test):
    src = get_source("ucf101")(root=shared_data / "ucf101", split=split)
    assert len(src.class_names) == 101 and src.class_names[0] == "ApplyEyeMakeup" and src.class_names[-1] == "YoYo"
    # the one real clip is in testlist01 and in the train lists of splits 2 and 3
    (clip,) = src.clips
    assert clip.name == "v_ApplyEyeMakeup_g01_c01" and clip.label == 0
    assert clip.split == ("test" if split == "1" else "train")
    assert clip.flow_dir == shared_data / "ucf101/frames/v_ApplyEyeMakeup_g01_c01"
    assert len(src.excluded) == n_train + n_test - 1
    assert src.params["flow"] == "precomputed" and src.params["missing_audio"] == "zeros"


def test_ucf101_bad_split(shared_data):
    with pytest.raises(MmvidError, match="choose 1, 2 or 3"):
        get_source("ucf101")(root=shared_data / "ucf101", split="4")


def ks_tree(shared_data: Path, tmp_path: Path, names: dict[str, tuple[int, str]]) -> tuple[Path, Path, Path]:
    """A Kinetics-Sounds layout of symlinks to the real YouTube-style clips, with OGM-GE lists.

    The labels are assigned here (these clips are not Kinetics-Sounds clips).
    """
    vids = shared_data / "kinetics_sounds_style/videos"
    root = tmp_path / "ks"
    (root / "videos").mkdir(parents=True)
    lines = {"train": [], "test": []}
    for file, (label, split) in names.items():
        stem = Path(file).stem
        (root / "videos" / file).symlink_to(vids / file)
        lines[split].append(f"{stem},10,{label}")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "class_names.txt").symlink_to(shared_data / "kinetics_sounds_style/splits_ogm_ge_full/INFERRED_class_names.txt")
    for split, ls in lines.items():
        (lists / f"my_{split}.txt").write_text("\r\n".join(ls) + "\r\n")  # CRLF, as distributed
    return root, lists / "my_train.txt", lists / "my_test.txt"


def test_kinetics_sounds_lists_and_class_file(shared_data, tmp_path):
    root, tr, te = ks_tree(shared_data, tmp_path, {"chaplin.mp4": (3, "train"), "flipping_a_pancake.mkv": (30, "test"),
                                                   "nasa_13013.mp4": (0, "train")})
    (root / "videos" / "stray.mp4").symlink_to(shared_data / "kinetics_sounds_style/videos/v_GGSY1Qvo990.mp4")
    with open(tr, "a") as f:
        f.write("notondisk_000001_000011,10,5\r\n")
    src = get_source("kinetics-sounds")(root=root, train_list=tr, test_list=te)
    assert len(src.class_names) == 31 and src.class_names[0] == "blowing nose"
    assert {c.name: (c.label, c.split) for c in src.clips} == {"chaplin": (3, "train"), "flipping_a_pancake": (30, "test"),
                                                              "nasa_13013": (0, "train")}
    assert {e["name"]: e["reason"] for e in src.excluded} == {
        "notondisk_000001_000011": "in a split list, no video under --root",
        "stray": "video under --root, in no split list"}
    assert src.params["num_frames"] == 3 and src.params["clip_seconds"] == 10.0


def test_folder_tree_with_and_without_lists(shared_data, tmp_path):
    vids = shared_data / "kinetics_sounds_style/videos"
    for cls, file in [("cook", "flipping_a_pancake.mkv"), ("sport", "v_GGSY1Qvo990.mp4"), ("walk", "v_ZNVhz7ctTq0.mp4"),
                      ("walk", "chaplin.mp4")]:
        (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / cls / file).symlink_to(vids / file)
    src = get_source("folder")(root=tmp_path / "data", seed=0)
    assert src.class_names == ["cook", "sport", "walk"]
    assert {c.name: c.label for c in src.clips} == {"cook/flipping_a_pancake": 0, "sport/v_GGSY1Qvo990": 1,
                                                   "walk/v_ZNVhz7ctTq0": 2, "walk/chaplin": 2}
    (tmp_path / "train.txt").write_text("cook/flipping_a_pancake.mkv\nwalk/chaplin.mp4 3\n")
    (tmp_path / "test.txt").write_text("walk/v_ZNVhz7ctTq0.mp4\n")
    src = get_source("folder")(root=tmp_path / "data", train_list=tmp_path / "train.txt", test_list=tmp_path / "test.txt")
    assert {c.name: c.split for c in src.clips} == {"cook/flipping_a_pancake": "train", "walk/chaplin": "train",
                                                   "walk/v_ZNVhz7ctTq0": "test"}
    assert [e["name"] for e in src.excluded] == ["sport/v_GGSY1Qvo990"]
