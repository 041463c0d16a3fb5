"""The example plug-ins under examples/ and what a run of each needs, for every test that trains them (through
the CLI here, through the Python API elsewhere): :func:`example_cases` gives each example's file and the
config keys of its one-epoch run (``mmvid.train(plugins=[case.plugin], **case.overrides)``, or on the command
line ``case.cli_args()``); :func:`write_csv_dataset` lays out a folder for the csv source example and
:data:`CSV_PREPARE_ARGS` are the prepare options that decode it like the demo."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
BALANCER, FUSION, AUGMENTATION, SOURCE = (EXAMPLES / f"{n}.py" for n in ("balancer", "fusion", "augmentation", "source"))

# One small epoch on CPU (every example run starts from the demo recipe).
TRAIN_KEYS = {"epochs": 1, "device": "cpu", "model.encoder": "small", "data.batch_size": 16}
CSV_CACHE = "democsv"  # the cache name the csv source example is prepared under
CSV_CLASSES = ("digit0", "digit1", "digit2")
# The demo's decoding (mmvid.data.demo.DEMO_PARAMS): its 5-fps clips at native rate, 32 x 32, 2 s of 16 kHz audio.
CSV_PREPARE_ARGS = ["--image-size", "32", "--fps", "0", "--sample-rate", "16000", "--clip-seconds", "2",
                    "--param", "hop=256"]


@dataclass(frozen=True)
class ExampleCase:
    name: str  # balancer | fusion | augmentation | source
    plugin: Path  # the example's file (given with --plugin / plugins=[...])
    overrides: dict = field(default_factory=dict)  # dotted config keys of its one-epoch run, on top of TRAIN_KEYS
    log_keys: tuple[str, ...] = ()  # what its run's metrics.jsonl line holds because the example ran

    def keys(self) -> dict:
        return {**TRAIN_KEYS, **self.overrides}

    def cli_args(self) -> list[str]:
        """``mmvid train`` options: --recipe demo, --plugin, and every key as --set."""
        args = ["--recipe", "demo", "--plugin", str(self.plugin)]
        for k, v in self.keys().items():
            args += ["--set", f"{k}={v}"]
        return args


def example_cases() -> list[ExampleCase]:
    """One case per example; the source example trains on the cache it prepared (:data:`CSV_CACHE`)."""
    return [
        ExampleCase("balancer", BALANCER, {"data.dataset": "demo", "balance.name": "score-power",
                                           "balance.args.gamma": 2.0}, ("power_coeff_audio", "power_rho_video")),
        ExampleCase("fusion", FUSION, {"data.dataset": "demo", "model.fusion": "attention",
                                       "model.fusion_args.dim": 32}),
        ExampleCase("augmentation", AUGMENTATION, {"data.dataset": "demo", "augment.name": "modality-dropout",
                                                   "augment.args.p": 0.5}, ("dropped_audio", "dropped_video")),
        ExampleCase("source", SOURCE, {"data.dataset": CSV_CACHE}),
    ]


def write_csv_dataset(demo_root: Path, dest: Path, missing: bool = True) -> Path:
    """A folder for the csv source: the demo videos of :data:`CSV_CLASSES` (from ``<workspace>/raw/demo``,
    as ``mmvid prepare demo`` writes them) copied flat into ``dest/videos/<class>_<clip>.mp4``, so that only
    ``dest/clips.csv`` (``path,label,split``, the demo's own splits) gives their classes. ``missing``: one more
    line names a video that does not exist. Returns ``dest``."""
    (dest / "videos").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,split"]
    for split in ("train", "test"):
        for clip in (demo_root / "splits" / f"{split}.txt").read_text().split():
            cls, stem = clip.split("/")
            if cls in CSV_CLASSES:
                shutil.copyfile(demo_root / f"{clip}.mp4", dest / "videos" / f"{cls}_{stem}.mp4")
                lines.append(f"videos/{cls}_{stem}.mp4,{cls},{split}")
    if missing:
        lines.append("videos/never_recorded.mp4,digit1,train")
    (dest / "clips.csv").write_text("\n".join(lines) + "\n")
    return dest
