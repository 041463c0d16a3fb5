"""docs/extending.md stays true to the code: every hook of the Balancer and Augmentation base classes has its
section (and every section names a real hook), every hook the training loop calls is in the Lightning table,
and the page's one-file balancer, its commands and the error lines it quotes are what mmvid does. The balancer
is cut from the page's code block into a file and run through the CLI (``python -m mmvid.cli``), each command in
its own process with the page's own command line, so that nothing it registers leaks into the other tests.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmvid.augment.base import Augmentation
from mmvid.balance.base import Balancer

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "extending.md"
CLASSES = {"Balancer": Balancer, "Augmentation": Augmentation}
TINY = ["--epochs", "1", "--device", "cpu", "--encoder", "small", "--batch-size", "16"]


def doc() -> str:
    return DOC.read_text()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, indented ones (inside a list item) dedented."""
    out = []
    for indent, lang, body in re.findall(r"^( *)```(\w*)\n(.*?)^\1```", text, re.M | re.S):
        out.append((lang, "".join(line[len(indent):] + "\n" for line in body.splitlines())))
    return out


def block(first_line: str) -> str:
    found = [body for _, body in code_blocks(doc()) if body.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/extending.md should hold one code block starting {first_line!r}"
    return found[0]


def command(pattern: str) -> list[str]:
    """The arguments (after ``mmvid``) of the first command line of the page's bash blocks matching ``pattern``."""
    for lang, body in code_blocks(doc()):
        if lang != "bash":
            continue
        for line in body.splitlines():
            line = line.split("#")[0].strip()
            if re.search(pattern, line):
                args = shlex.split(line)
                assert args[0] == "mmvid", line
                return args[1:]
    raise AssertionError(f"docs/extending.md has no command matching {pattern!r}")


def mmvid(*args: str, cwd: Path, workspace: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MMVID_PLUGINS"}
    env.update(PYTHONPATH=str(REPO), COLUMNS="400")
    if workspace is not None:
        env["MMVID_HOME"] = str(workspace)
    return subprocess.run([sys.executable, "-m", "mmvid.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


# ----------------------------------------------------------------------------- the hook contract


def documented_hooks() -> dict[str, set[str]]:
    """Class -> the hook names the page's hook sections (#### headings) name as ``Class.name(``."""
    names: dict[str, set[str]] = {c: set() for c in CLASSES}
    for line in doc().splitlines():
        if line.startswith("#### "):
            for cls, name in re.findall(r"`(Balancer|Augmentation)\.(\w+)\(", line):
                names[cls].add(name)
    return names


def public_methods(cls: type) -> set[str]:
    return {n for n, v in inspect.getmembers(cls) if not n.startswith("_") and inspect.isroutine(v)}


def loop_hooks() -> dict[str, set[str]]:
    """The methods the training loop calls on the balancer and the augmentation (mmvid/engine/), and what the
    default ``Augmentation.compute`` calls on itself."""
    src = "\n".join(p.read_text() for p in sorted((REPO / "mmvid" / "engine").glob("*.py")))
    hooks = {"Balancer": set(re.findall(r"\bbalancer\.(\w+)\(", src)),
             "Augmentation": set(re.findall(r"\baugment\.(\w+)\(", src))}
    hooks["Augmentation"] |= set(re.findall(r"\bself\.(\w+)\(", inspect.getsource(Augmentation.compute)))
    return hooks


def test_every_method_of_the_base_classes_has_a_section_and_every_section_names_one():
    sections = documented_hooks()
    for name, cls in CLASSES.items():
        missing = public_methods(cls) - sections[name]
        assert not missing, f"{name} methods without a section in docs/extending.md: {sorted(missing)}"
        unknown = {n for n in sections[name] if not callable(getattr(cls, n, None))}
        assert not unknown, f"docs/extending.md has sections for {name} hooks that do not exist: {sorted(unknown)}"
    # the loop's own calls are what a section must cover (not a list kept by hand)
    hooks = loop_hooks()
    assert {"after_backward", "loss", "on_batch", "passes", "epoch_order"} <= hooks["Balancer"]
    for name, called in hooks.items():
        assert called <= sections[name], f"hooks the loop calls on {name} without a section: {sorted(called - sections[name])}"


def test_every_attribute_the_base_classes_declare_is_documented():
    text = doc()
    for cls in CLASSES.values():
        for n, v in inspect.getmembers(cls):
            if not n.startswith("_") and not inspect.isroutine(v):
                assert f"`{n}`" in text, f"{cls.__name__}.{n} is not described in docs/extending.md"


def test_the_lightning_table_maps_every_loop_hook_and_after_backward_to_on_before_optimizer_step():
    text = doc()
    table = text[text.index("## Lightning hooks side by side"):]
    table = table[:table.index("\n## ")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for name, called in loop_hooks().items():
        for hook in called:
            assert any(f"`{name}.{hook}`" in row for row in rows), f"{name}.{hook} has no row in the Lightning table"
    (row,) = [r for r in rows if r.startswith("| `Balancer.after_backward`")]
    lightning = row.split("|")[3]
    assert lightning.strip().startswith("`on_before_optimizer_step`") and "not `on_after_backward`" in lightning


# ----------------------------------------------------------------------------- the one-file balancer


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A folder holding my_balancer.py as the page prints it."""
    folder = tmp_path_factory.mktemp("extending")
    (folder / "my_balancer.py").write_text(block("# my_balancer.py"))
    return folder


def test_the_one_file_balancer_of_the_doc_trains_one_epoch_and_its_run_evaluates(tiny_ws, plugin_dir):
    args = command(r"^mmvid train --recipe demo --plugin my_balancer\.py --balance \S+ --set ")
    assert "--gpus" not in args
    done = mmvid(*args, "-w", str(tiny_ws), *TINY, "--run-name", "doc-balancer", cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tiny_ws / "runs" / "doc-balancer"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    key, value = args[args.index("--set") + 1].split("=")
    assert cfg["balance"]["name"] == args[args.index("--balance") + 1]
    assert cfg["balance"]["args"][key.removeprefix("balance.args.")] == float(value)
    assert cfg["plugins"] == [str((plugin_dir / "my_balancer.py").resolve())]
    (line,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # after_backward ran on every step: its coefficient is in (0, 1] and exactly one modality led each step
    assert 0.0 < line["damp_k"] <= 1.0
    assert line["damp_lead_audio"] + line["damp_lead_video"] == pytest.approx(1.0)

    evaluate = command(r"^mmvid evaluate RUN --plugin my_balancer\.py")
    done = mmvid(*[str(run) if a == "RUN" else a for a in evaluate], cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "eval_test.json").read_text())["n"] > 0


def test_list_shows_every_setting_the_doc_balancer_declares(plugin_dir):
    fields = re.findall(r"^ {8}(\w+): [\w |]+ = spec\(.*help=\"([^\"]+)\"", block("# my_balancer.py"), re.M)
    assert len(fields) >= 2
    done = mmvid(*command(r"^mmvid train --plugin my_balancer\.py --list \S+"), cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    for key, help_ in fields:
        assert re.search(rf"│ {key} +│", done.stdout) and help_ in done.stdout, (key, done.stdout[-2000:])


def test_the_settings_errors_the_doc_quotes_are_the_lines_mmvid_prints(tiny_ws, plugin_dir):
    quoted = []
    for lang, body in code_blocks(doc()):
        if lang == "console":
            for cmd, output in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", body, re.M):
                quoted.append((cmd, output.splitlines()))
    assert len(quoted) >= 2
    for cmd, expected in quoted:
        args = shlex.split(cmd)
        done = mmvid(*args[1:], cwd=plugin_dir, workspace=tiny_ws)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (cmd, done.stderr[-2000:])
        assert [line for line in done.stderr.splitlines() if line.strip()] == expected, cmd


def test_the_docs_recipe_beside_the_balancer_trains_with_plugin_given(tiny_ws, plugin_dir):
    body = block("# damp.yaml, beside my_balancer.py")
    assert yaml.safe_load(body)["plugins"] == ["my_balancer.py"]
    (plugin_dir / "damp.yaml").write_text(body)
    args = command(r"^mmvid train --recipe damp\.yaml --plugin my_balancer\.py")
    done = mmvid(*args, "-w", str(tiny_ws), *TINY, "--run-name", "doc-recipe", cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert yaml.safe_load((tiny_ws / "runs" / "doc-recipe" / "config.yaml").read_text())["balance"]["args"]["power"] == 0.5
