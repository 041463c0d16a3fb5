"""The proving-ground source (mmvid.data.sources.proving) and the regime figures (mmvid.results.evaluation.regime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmvid.data.sources import proving as P
from mmvid.errors import MmvidError


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return P.generate(tmp_path_factory.mktemp("proving") / "a", n_clips=40, seed=3)


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_in_the_seed(small_set, tmp_path):
    again = P.generate(tmp_path / "b", n_clips=40, seed=3)
    first, second = _listing(small_set), _listing(again)
    assert sum(k.endswith(".mp4") for k in first) == 40
    assert first == second  # the same names, labels (class folders), splits and bytes
    other = _listing(P.generate(tmp_path / "c", n_clips=40, seed=4))
    assert other["splits/train.txt"] != first["splits/train.txt"] or any(
        other[k] != first[k] for k in first if k.endswith(".mp4"))


def test_source_lists_the_clips_with_balanced_classes_and_small_params(small_set):
    src = P.proving_source(root=small_set, n_clips=40, seed=3)
    assert src.dataset == "proving" and len(src.clips) == 40
    train = [c for c in src.clips if c.split == "train"]
    assert np.bincount([c.label for c in train], minlength=10).tolist() == [3] * 10
    assert all(c.video.exists() and P.CLASS_NAMES[c.label] == c.name.split("/")[0] for c in src.clips)
    from mmvid.data.params import PrepareParams

    assert PrepareParams.build(src.params).shapes() == {"frames": (3, 16, 16, 3), "spectrogram": (65, 32)}


def test_source_is_registered_as_generated():
    from mmvid.data.sources import GENERATED, get_source

    assert get_source("proving") is P.proving_source and "proving" in GENERATED


def _clip(i: int, seed: int = 3):
    labels, is_test = P.layout(40, seed)
    images, targets = P._digit_images()
    by_class = [np.flatnonzero(targets == c) for c in range(10)]
    melody = int(P.melody_ids(labels, is_test)[i])
    return labels[i], P.clip_arrays(seed, i, int(labels[i]), bool(is_test[i]), melody, images, by_class)


def _power(wave: np.ndarray, f: float, part: slice = slice(None)) -> float:
    """Power of ``wave[part]`` at frequency f (a DFT coefficient, Hz resolution)."""
    x = wave[part].astype(np.float64)
    t = np.arange(len(x)) / P.SR
    return float(abs(np.sum(x * np.exp(-2j * np.pi * f * t))) ** 2 / len(x) ** 2)


def test_melodies_are_shared_by_groups_of_training_clips_of_one_class_and_never_heard_on_test():
    labels, is_test = P.layout(200, 0)
    ids = P.melody_ids(labels, is_test, share=4)
    train, test = ids[~is_test], ids[is_test]
    assert len(set(test)) == len(test) and not set(test) & set(train)  # a test clip's melody is its own
    for m in set(train):
        members = np.flatnonzero(ids == m)
        assert len(set(labels[members])) == 1 and len(members) <= 4 and m == members[0]
    # every class's training clips fill whole groups of 4 but the last
    for c in range(10):
        sizes = np.bincount(ids[(labels == c) & ~is_test])
        sizes = sizes[sizes > 0]
        assert (sizes[:-1] == 4).all() and 1 <= sizes[-1] <= 4
    assert (P.melody_ids(labels, is_test, share=1) == np.arange(200)).all()


def test_every_clip_sounds_its_melody_and_its_class_pair_chord():
    labels, is_test = P.layout(40, 3)
    ids = P.melody_ids(labels, is_test)
    melodies, chords = {}, []
    for i in range(40):
        c, (frames, wave, notes) = _clip(i)
        assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
        assert wave.shape == (P.SR,) and np.abs(wave).max() <= 1
        assert len(notes) == P.NOTES and np.all((notes >= P.MELODY_BAND[0]) & (notes <= P.MELODY_BAND[1]))
        np.testing.assert_array_equal(notes, P.melody_notes(3, ids[i]))
        seg = P.SR // P.NOTES
        for k, f in enumerate(notes):  # each note sounds in its own slot, at MELODY_AMP (power amp^2 / 4)
            assert _power(wave, f, slice(k * seg, (k + 1) * seg)) == pytest.approx(P.MELODY_AMP ** 2 / 4, rel=0.35)
        partials = P.chord_partials(c)
        np.testing.assert_allclose(partials, P.CHORD_ROOTS[c % 5] * np.array([1, 1.25, 1.5]))
        # (away from a melody note, which may sound near any partial)
        strong = [_power(wave, f) for f in partials if np.abs(notes - f).min() > 30]
        assert strong and max(abs(p / ((P.CHORD_AMP / 3) ** 2 / 4) - 1) for p in strong) < 0.5
        other = [_power(wave, f) for k in range(5) if k != c % 5 for f in P.chord_partials(k)
                 if np.abs(notes - f).min() > 30]  # and no other chord
        assert min(strong) > 5 * max(other)
        melodies.setdefault(tuple(np.round(notes, 3)), set()).add(int(ids[i]))
        chords.append(c % 5)
    assert len(melodies) == len(set(ids)) and all(len(v) == 1 for v in melodies.values())  # one per melody id
    assert chords == [int(c) % 5 for c in labels]  # classes c and c + 5 share the cue


def test_video_holds_a_digit_of_the_class_from_the_split_half():
    images, targets = P._digit_images()
    labels, is_test = P.layout(40, 3)
    wins = []
    for i in range(10):
        c, (frames, _, _) = _clip(i)
        rng = P.clip_rng(3, i)
        pool = np.flatnonzero(targets == c)
        half = len(pool) // 2
        pick = rng.choice(pool[half:] if is_test[i] else pool[:half])
        assert targets[pick] == c
        others = [images[np.flatnonzero(targets == k)[0]] for k in range(10) if k != c]
        for fr in frames[..., 0].astype(np.float32) / 255:
            assert np.allclose(frames[..., 0], frames[..., 1])  # grey: no per-clip tint to memorise
            # the frame matches its own digit better than a digit of any other class (in its best window)
            own = _best_match(fr, images[pick])
            wins.append(own > max(_best_match(fr, d) for d in others))
    assert np.mean(wins) >= 0.8


def _best_match(frame: np.ndarray, digit: np.ndarray) -> float:
    return max(np.corrcoef(frame[y:y + 8, x:x + 8].ravel(), digit.ravel())[0, 1] for y in range(9) for x in range(9))


def _write_metrics(run: Path, recs: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def _rec(epoch, a_tr, a_te, v_tr, v_te, fused, s_a, s_v):
    return {"epoch": epoch, "train_acc_audio": a_tr, "test_acc_audio": a_te, "train_acc_video": v_tr,
            "test_acc_video": v_te, "test_acc": fused, "s_audio": s_a, "s_video": s_v, "rho": s_a / s_v}


def test_regime_figures_from_a_hand_written_metrics_file(tmp_path):
    from mmvid.results.evaluation import regime

    run = _write_metrics(tmp_path / "r", [_rec(0, 0.5, 0.5, 0.12, 0.10, 0.52, 300, 100),
                                          _rec(1, 0.9, 0.48, 0.20, 0.15, 0.66, 800, 200)])
    r = regime(run)
    assert (r.epochs, r.strong_train, r.strong_test, r.weak_train, r.weak_test, r.fused_test) == (2, 0.9, 0.48, 0.20, 0.15, 0.66)
    assert r.strong_gap == pytest.approx(0.42) and r.weak_gap == pytest.approx(0.05)
    assert r.fused_gain == pytest.approx(0.18)
    assert (r.rho_min, r.rho_last) == (3.0, 4.0)
    assert r.holds() and "regime holds" in r.line()
    # the demo's failure: video memorises too and the train rho falls below 1
    demo = regime(_write_metrics(tmp_path / "d", [_rec(0, 0.5, 0.5, 0.3, 0.2, 0.6, 300, 100),
                                                  _rec(1, 0.55, 0.5, 0.9, 0.4, 0.8, 300, 600)]))
    assert demo.rho_min == 0.5 and demo.weak_gap == pytest.approx(0.5) and not demo.holds()
    assert not regime(run, strong="video", weak="audio").holds()  # the roles swapped: rho = 1 / 3
    with pytest.raises(MmvidError, match="lacks s_audio"):
        regime(_write_metrics(tmp_path / "m", [{"epoch": 0, "test_acc": 0.5, "train_acc_audio": 0.5, "test_acc_audio": 0.5,
                                                "train_acc_video": 0.1, "test_acc_video": 0.1}]))


@pytest.mark.slow
def test_prepare_and_train_show_the_regime_direction(tmp_path):
    """A 300-clip proving set through `prepare` and 6 epochs of concat with recipes/proving.yaml: audio
    already learns its training clips faster than its test clips, video does not, and rho > 1."""
    from rich.console import Console

    from mmvid.results.evaluation import regime
    from mmvid.workflows import run_prepare, run_train

    con = Console(quiet=True)
    run_prepare(con, tmp_path, "proving", clips=300, workers=1, progress=False)
    run = run_train(con, tmp_path, "proving", {"epochs": 6, "run_name": "p", "device": "cpu"}, progress=False)
    r = regime(run)
    assert r.rho_min > 1.0
    assert r.strong_gap > r.weak_gap
    # `mmvid diagnose` on that run finds audio memorising and learned first
    from mmvid.results.diagnosis.diagnose import diagnose_run

    data = diagnose_run(run, con, alone=False).data
    gaps = {i["modality"]: i for i in data["measured"] if i["pattern"] == "memorising"}
    c = data["curves"]
    assert c["gap_audio"][-1] > c["gap_video"][-1] and set(gaps) == {"audio", "video"}
    assert c["learned_first"] == "audio" and data["shapley"]["test"]["share"]["audio"] > 0.5
