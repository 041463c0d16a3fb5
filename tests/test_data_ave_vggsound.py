"""AVE, VGGSound and Kinetics-Sounds from raw files: tiny hand-made split files over the real clips of
../shared/data/kinetics_sounds_style/videos (symlinked under the names each data set's files use; these are
not AVE, VGGSound or Kinetics-Sounds clips, so every label is assigned here), the pinned class lists, the
missing-file manifest, and one real ``prepare`` through each source."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from mmvid.data.cache import SPLIT_NAMES, read_info
from mmvid.data.class_lists import AVE_ANNOTATION_ORDER, AVE_CLASSES, KS_CLASSES, VGGSOUND_CLASSES
from mmvid.data.sources import get_source, missing_manifest
from mmvid.errors import MmvidError
from mmvid.workflows import run_prepare

QUIET = Console(quiet=True)
SMALL = {"image_size": 32, "clip_seconds": 2.0}  # small frames and audio: the decode path, quickly


def link(shared_data: Path, dst: Path, clip: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(shared_data / "kinetics_sounds_style/videos" / clip)


def split_of(info, name: str) -> str:
    return SPLIT_NAMES[int(info.split[info.names.index(name)])]


# ----------------------------------------------------------------------------- pinned class lists


def test_pinned_class_lists():
    # AVE: the 28 categories of the official Annotations.txt, labels in sorted order as OGM-GE's loader has them
    assert len(AVE_ANNOTATION_ORDER) == len(set(AVE_ANNOTATION_ORDER)) == 28
    assert AVE_ANNOTATION_ORDER[:3] == ("Church bell", "Male speech, man speaking", "Bark")
    assert AVE_CLASSES == tuple(sorted(AVE_ANNOTATION_ORDER)) and AVE_CLASSES[0] == "Accordion"
    # VGGSound: the 309 labels of the official stat.csv, sorted as the official loader sorts them
    assert len(VGGSOUND_CLASSES) == len(set(VGGSOUND_CLASSES)) == 309
    assert list(VGGSOUND_CLASSES) == sorted(VGGSOUND_CLASSES)
    assert {"people marching", "bird chirping, tweeting", "playing violin, fiddle"} <= set(VGGSOUND_CLASSES)
    # Kinetics-Sounds: the 31 names of ../shared/data's (inferred) class file, in its order
    assert len(KS_CLASSES) == 31


def test_ks_pinned_names_equal_the_shared_class_file(shared_data):
    lines = (shared_data / "kinetics_sounds_style/splits_ogm_ge_full/INFERRED_class_names.txt").read_text().splitlines()
    assert list(KS_CLASSES) == [ln.split(" ", 1)[1] for ln in lines if ln.strip()]


# ----------------------------------------------------------------------------- AVE


def ave_tree(shared_data: Path, tmp_path: Path) -> Path:
    """An AVE_Dataset folder: AVE/<VideoID>.<ext> links and the three official lists (CRLF, one with a header)."""
    root = tmp_path / "AVE_Dataset"
    for vid, clip in [("RUhOCu3LNXM", "chaplin.mp4"), ("-J2WJaG1Dd4", "v_GGSY1Qvo990.mp4"),
                      ("MH3m4AwEcRY", "flipping_a_pancake.mkv"), ("0giAfYq9oVM", "v_ZNVhz7ctTq0.mp4"),
                      ("twoEvents01", "nasa_13013.mp4"), ("strayVideo1", "chaplin.mp4")]:
        link(shared_data, root / "AVE" / f"{vid}{Path(clip).suffix}", clip)
    lists = {
        "trainSet.txt": ["Church bell&RUhOCu3LNXM&good&0&10", "Bark&-J2WJaG1Dd4&good&2&8", "Goat&notOnDisk1&good&0&10"],
        "valSet.txt": ["Banjo&MH3m4AwEcRY&good&0&10"],
        "testSet.txt": ["Category&VideoID&Quality&StartTime&EndTime", "Male speech, man speaking&0giAfYq9oVM&good&3&9",
                        "Horse&twoEvents01&good&0&5", "Train horn&twoEvents01&good&5&10"],
    }
    for name, lines in lists.items():
        (root / name).write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return root


def test_ave_lists_labels_splits_and_missing(shared_data, tmp_path):
    root = ave_tree(shared_data, tmp_path)
    src = get_source("ave")(root=root)
    assert src.class_names == list(AVE_CLASSES)
    got = {c.name: (src.class_names[c.label], c.split, c.video.name) for c in src.clips}
    assert got == {"RUhOCu3LNXM": ("Church bell", "train", "RUhOCu3LNXM.mp4"),
                   "-J2WJaG1Dd4": ("Bark", "train", "-J2WJaG1Dd4.mp4"),
                   "MH3m4AwEcRY": ("Banjo", "val", "MH3m4AwEcRY.mkv"),
                   "0giAfYq9oVM": ("Male speech, man speaking", "test", "0giAfYq9oVM.mp4")}
    reasons = {e["name"]: e["reason"] for e in src.excluded}
    assert set(reasons) == {"notOnDisk1", "twoEvents01", "strayVideo1"}
    assert "several categories" in reasons["twoEvents01"] and "no video" in reasons["notOnDisk1"]
    assert "no split list" in reasons["strayVideo1"]
    assert src.missing == ["Goat&notOnDisk1&good&0&10"]
    assert src.params["num_frames"] == 3 and src.params["sample_rate"] == 22050 and src.params["hop"] == 159
    assert round(src.params["sample_rate"] * src.params["clip_seconds"]) == 160_000  # OGM-GE's 160,000 samples


def test_ave_bad_input_is_one_clear_error(shared_data, tmp_path):
    root = ave_tree(shared_data, tmp_path)
    (root / "valSet.txt").write_text("Banjo,MH3m4AwEcRY,good,0,10\n")
    with pytest.raises(MmvidError, match=r"valSet.txt:1: expected `Category&VideoID"):
        get_source("ave")(root=root)
    (root / "valSet.txt").write_text("Dog&MH3m4AwEcRY&good&0&10\n")  # not an AVE category
    with pytest.raises(MmvidError, match="28 categories"):
        get_source("ave")(root=root)
    (root / "valSet.txt").unlink()
    with pytest.raises(MmvidError, match=r"valSet.txt not found in .*AVE_Dataset"):
        get_source("ave")(root=root)


def test_ave_prepare_pins_classes_val_split_and_manifest(shared_data, tmp_path):
    root = ave_tree(shared_data, tmp_path)
    cache = run_prepare(QUIET, tmp_path / "ws", "ave", root=root, progress=False, params=SMALL)
    info = read_info(cache)
    assert info.class_names == list(AVE_CLASSES)
    assert sorted(info.names) == sorted(["RUhOCu3LNXM", "-J2WJaG1Dd4", "MH3m4AwEcRY", "0giAfYq9oVM"])
    assert (info.status == 1).all()
    assert split_of(info, "MH3m4AwEcRY") == "val" and split_of(info, "0giAfYq9oVM") == "test"
    assert info.class_names[int(info.labels[info.names.index("-J2WJaG1Dd4")])] == "Bark"
    assert info.shapes["frames"] == (3, 32, 32, 3)
    assert info.shapes["spectrogram"] == (257, 1 + round(22050 * 2.0) // 159)
    assert missing_manifest(cache).read_text() == "Goat&notOnDisk1&good&0&10\n"
    report = json.loads(Path(f"{cache}.report.json").read_text())
    assert {e["name"] for e in report["excluded"]} == {"notOnDisk1", "twoEvents01", "strayVideo1"}
    # once the video is there, the manifest goes
    link(shared_data, root / "AVE" / "notOnDisk1.mp4", "v_ZNVhz7ctTq0.mp4")
    run_prepare(QUIET, tmp_path / "ws", "ave", root=root, progress=False, params=SMALL)
    assert not missing_manifest(cache).exists()


# ----------------------------------------------------------------------------- VGGSound


VGG_ROWS = [  # (youtube id, start, label, split); the file each one is on disk as, if any
    ("aaaaaaaaaaa", 30, "people marching", "train", "videos/aaaaaaaaaaa_000030.mp4"),  # official name
    ("bbbbbbbbbbb", 7, "dog barking", "test", "videos/test/bbbbbbbbbbb_7.mp4"),  # OGM-GE's item[0]_item[1]
    ("ccccccccccc", 10, "playing violin, fiddle", "train", "videos/ccccccccccc_000010_000020.mkv"),  # Kinetics style
    ("-dddddddddd", 1, "bird chirping, tweeting", "train", "videos/-dddddddddd_1000_11000.mp4"),  # audiosetdl (ms)
    ("eeeeeeeeeee", 3, "bird chirping, tweeting", "train", None),  # not downloaded
    ("fffffffffff", 0, "not a vggsound label", "train", None),
]
VGG_CLIPS = ["chaplin.mp4", "v_GGSY1Qvo990.mp4", "flipping_a_pancake.mkv", "v_ZNVhz7ctTq0.mp4"]


def csv_line(row) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(row)
    return buf.getvalue()


def vggsound_tree(shared_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "vggsound"
    for (*_, file), clip in zip(VGG_ROWS, VGG_CLIPS):
        link(shared_data, root / file, clip)
    link(shared_data, root / "videos/zzzzzzzzzzz_000005.mp4", "chaplin.mp4")  # in no row
    (root / "vggsound.csv").write_text("".join(csv_line(r[:4]) + "\n" for r in VGG_ROWS))
    return root


def test_vggsound_names_labels_splits_and_missing(shared_data, tmp_path):
    root = vggsound_tree(shared_data, tmp_path)
    src = get_source("vggsound")(root=root)
    assert src.class_names == list(VGGSOUND_CLASSES)
    got = {c.name: (src.class_names[c.label], c.split, c.video.relative_to(root).as_posix()) for c in src.clips}
    assert got == {f"{y}_{s:06d}": (label, split, file) for y, s, label, split, file in VGG_ROWS[:4]}
    reasons = {e["name"]: e["reason"] for e in src.excluded}
    assert set(reasons) == {"eeeeeeeeeee_000003", "fffffffffff_000000 (not a vggsound label)", "zzzzzzzzzzz_000005"}
    assert "no video" in reasons["eeeeeeeeeee_000003"]
    assert "309 classes" in reasons["fffffffffff_000000 (not a vggsound label)"]
    # the manifest line is the csv row itself, quoting included: a csv a downloader reads
    assert src.missing == ['eeeeeeeeeee,3,"bird chirping, tweeting",train']
    assert src.params["sample_rate"] == 16000 and src.params["n_fft"] == 256 and src.params["clip_seconds"] == 5.0


def test_vggsound_csv_given_with_train_list_and_bad_rows(shared_data, tmp_path):
    root = vggsound_tree(shared_data, tmp_path)
    elsewhere = tmp_path / "meta" / "vggsound.csv"
    elsewhere.parent.mkdir()
    (root / "vggsound.csv").rename(elsewhere)
    with pytest.raises(MmvidError, match="vggsound.csv not found"):
        get_source("vggsound")(root=root)
    src = get_source("vggsound")(root=root, train_list=elsewhere)
    assert len(src.clips) == 4
    elsewhere.write_text("# YouTube ID, start seconds, label, train/test split\n" + elsewhere.read_text())
    assert len(get_source("vggsound")(root=root, train_list=elsewhere).clips) == 4  # a header row is skipped
    elsewhere.write_text(elsewhere.read_text() + "ggggggggggg,12,dog barking,validation\n")
    with pytest.raises(MmvidError, match=r"vggsound.csv:8: expected `youtube_id,start_seconds,label,split`"):
        get_source("vggsound")(root=root, train_list=elsewhere)


def test_vggsound_prepare_pins_classes_and_writes_manifest(shared_data, tmp_path):
    root = vggsound_tree(shared_data, tmp_path)
    cache = run_prepare(QUIET, tmp_path / "ws", "vggsound", root=root, progress=False, params=SMALL)
    info = read_info(cache)
    assert info.class_names == list(VGGSOUND_CLASSES)
    assert (info.status == 1).all() and len(info.names) == 4
    assert split_of(info, "bbbbbbbbbbb_000007") == "test" and split_of(info, "aaaaaaaaaaa_000030") == "train"
    assert info.class_names[int(info.labels[info.names.index("ccccccccccc_000010")])] == "playing violin, fiddle"
    assert info.shapes["spectrogram"] == (129, 1 + 16000 * 2 // 128)
    assert missing_manifest(cache).read_text() == 'eeeeeeeeeee,3,"bird chirping, tweeting",train\n'


# ----------------------------------------------------------------------------- Kinetics-Sounds


def ks_real_lists(shared_data: Path, tmp_path: Path) -> tuple[Path, Path, Path, dict[str, tuple[int, str]]]:
    """OGM-GE's real lists (copied, no class file beside them) and two real clips named as two of their ids."""
    full = shared_data / "kinetics_sounds_style/splits_ogm_ge_full"
    lists = tmp_path / "lists"
    lists.mkdir()
    tr, te = lists / "my_train.txt", lists / "my_test.txt"
    tr.write_bytes((full / "my_train.txt").read_bytes())
    te.write_bytes((full / "my_test.txt").read_bytes())
    first = {s: p.read_text().splitlines()[0].split(",") for s, p in (("train", tr), ("test", te))}
    root = tmp_path / "k400"
    link(shared_data, root / "train" / f"{first['train'][0]}.mp4", "chaplin.mp4")
    link(shared_data, root / "test" / f"{first['test'][0]}.mkv", "flipping_a_pancake.mkv")
    present = {first[s][0]: (int(first[s][2]), s) for s in ("train", "test")}
    return root, tr, te, present


def test_kinetics_sounds_pinned_classes_recognised_lists_and_manifest(shared_data, tmp_path):
    root, tr, te, present = ks_real_lists(shared_data, tmp_path)
    src = get_source("kinetics-sounds")(root=root, train_list=tr, test_list=te)
    assert src.class_names == list(KS_CLASSES)
    assert {c.name: (c.label, c.split) for c in src.clips} == present
    assert any("OGM-GE's my_train.txt (14,799 lines" in n for n in src.notes)
    assert any("OGM-GE's my_test.txt (2,597 lines" in n for n in src.notes)
    all_lines = tr.read_text().splitlines() + te.read_text().splitlines()
    assert len(src.missing) == 14_799 + 2_597 - 2
    assert src.missing == [ln for ln in all_lines if ln.split(",")[0] not in present]
    # a list that is not OGM-GE's is named as such
    te.write_text("\n".join(te.read_text().splitlines()[:10]) + "\n")
    notes = get_source("kinetics-sounds")(root=root, train_list=tr, test_list=te).notes
    assert any("is not OGM-GE's (the paper's) my_test.txt: 10 lines against 2,597" in n for n in notes)


def test_kinetics_sounds_more_classes_need_a_class_file(shared_data, tmp_path):
    root, tr, te, _ = ks_real_lists(shared_data, tmp_path)
    with open(tr, "a") as f:
        f.write("extra_000001_000011,10,33\n")  # a 34-class variant's label
    with pytest.raises(MmvidError, match=r"my_train.txt:14800: .*label_idx < 31.*\*class\*.txt"):
        get_source("kinetics-sounds")(root=root, train_list=tr, test_list=te)
    (tr.parent / "classes.txt").write_text("".join(f"class{k}\n" for k in range(34)))
    src = get_source("kinetics-sounds")(root=root, train_list=tr, test_list=te)
    assert len(src.class_names) == 34 and any("is not OGM-GE's" in n for n in src.notes)


def test_kinetics_sounds_prepare_writes_manifest_through_the_cli(shared_data, tmp_path):
    from typer.testing import CliRunner

    from mmvid.cli import app

    root, tr, te, present = ks_real_lists(shared_data, tmp_path)
    ws = tmp_path / "ws"
    res = CliRunner().invoke(app, ["prepare", "kinetics-sounds", "-w", str(ws), "--root", str(root), "--train-list",
                                   str(tr), "--test-list", str(te), "--image-size", "32", "--clip-seconds", "2"])
    assert res.exit_code == 0, res.output
    assert "17394 clips of the split lists have no video" in " ".join(res.output.split())
    cache = ws / "caches" / "kinetics-sounds.h5"
    info = read_info(cache)
    assert info.class_names == list(KS_CLASSES) and sorted(info.names) == sorted(present)
    lines = missing_manifest(cache).read_text().splitlines()
    assert len(lines) == 17_394 and lines[0] == tr.read_text().splitlines()[1]
