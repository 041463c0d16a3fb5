"""Every plug-in's settings are declared once (a ``Settings`` dataclass of ``spec`` fields) and checked in one
place (:func:`mmvid.config.resolve_config`): a misspelled key, a wrong type or a value out of range is one line
and exit 2, never a silent default."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.config import RECIPES, TrainConfig, config_from_dict, read_recipe, resolve_config
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS, FUSIONS

load_plugins()
runner = CliRunner()


def one_line(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--balance", "ogm-ge", "--set", "balance.args.alpah=0.5"],
     ["balance.args.alpah", "balancer 'ogm-ge'", "did you mean balance.args.alpha?", "alpha, start, end, ge, params, score"]),
    (["--fusion", "mmcosine", "--set", "model.fusion_args.sclae=5"],
     ["model.fusion_args.sclae", "fusion 'mmcosine'", "did you mean model.fusion_args.scale?", "its settings: scale"]),
    (["--aug", "bmm", "--set", "augment.args.betta=0.3"],
     ["augment.args.betta", "augmentation 'bmm'", "did you mean augment.args.beta?", "warmup, beta, rho_stat"]),
    (["--set", "augment.args.betta=0.3"], ["augment.args.betta", "augmentation 'none'", "it has no settings"]),
])
def test_the_measured_misspellings_are_one_line_and_exit_2(tmp_path, args, needles):
    """The three cases of the issue (they used to train with the default), through the CLI before any training."""
    one_line(runner.invoke(app, ["train", "-w", str(tmp_path), *args]), *needles)


def test_a_misspelled_key_in_a_recipe_names_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("balance: {name: ogm-ge, args: {alpah: 0.5}}\n")
    one_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", str(recipe)]),
             "balance.args.alpah", "did you mean balance.args.alpha?", str(recipe))


def test_a_setting_under_another_plug_ins_name_is_checked_even_when_that_plug_in_does_not_run():
    with pytest.raises(MmvidError, match=r"augment.args.betta: augmentation 'bmm' has no setting 'betta'"):
        resolve_config({"augment": {"name": "mm", "bmm": {"betta": 0.3}}})
    with pytest.raises(MmvidError, match=r"'nosuch' is no augmentation"):
        resolve_config({"augment": {"nosuch": {"beta": 0.3}}})
    cfg = resolve_config({"augment": {"name": "bmm", "bmm": {"beta": 0.3}, "mm": {"alpha": 0.7}}})
    assert cfg.augment.args["beta"] == 0.3 and "alpha" not in cfg.augment.args


def test_settings_are_typed_and_saved_in_full():
    cfg = resolve_config(None, {"balance.name": "ogm-ge", "balance.args.alpha": "0.5", "balance.args.end": "none"})
    assert cfg.balance.args["alpha"] == 0.5 and cfg.balance.args["end"] is None
    assert cfg.balance.args == {"alpha": 0.5, "start": 0, "end": None, "ge": True, "params": "conv", "score": "mask"}
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_fusion_constructors_take_exactly_their_declared_settings():
    """No ``**_`` swallowing a typo: each fusion's keyword parameters are its Settings fields."""
    import inspect

    for name in FUSIONS.names():
        params = [p for p in inspect.signature(FUSIONS.get(name).__init__).parameters.values()
                  if p.name not in ("self", "dims")]
        assert not [p for p in params if p.kind is p.VAR_KEYWORD], name
        assert [p.name for p in params] == [f.name for f in dataclasses.fields(FUSIONS.settings(name))], name


# ----------------------------------------------------------------------------- the old layout


OLD_BMM_RUN = {  # a config.yaml as `mmvid train` saved it before B-MM's fields moved into augment.args
    "data": {"dataset": "demo", "modalities": ["audio", "video"]},
    "model": {"encoder": "small", "width": 8, "fusion": "concat", "calibrate": False, "fusion_args": {},
              "init": "ogm-ge"},
    "augment": {"name": "bmm", "alpha": 0.2, "warmup": 2, "beta": 0.4, "rho_stat": "score", "lambda_map": "scaled",
                "rho_split": "val", "stage": "feature", "unimodal": "mask", "args": {}},
    "balance": {"name": "ogm-ge", "args": {"alpha": 0.5}},
    "epochs": 3,
}


def test_a_run_saved_in_the_old_layout_reads_back_to_the_same_settings():
    notes: list[str] = []
    old = config_from_dict(OLD_BMM_RUN, notes=notes)
    new = resolve_config({**OLD_BMM_RUN, "augment": {"name": "bmm", "args": {"warmup": 2, "beta": 0.4, "rho_split": "val"}}},
                         notes=[])
    assert old == new and old.augment.args["beta"] == 0.4 and old.augment.args["rho_split"] == "val"
    assert len(notes) == 1 and "augment.beta -> augment.bmm.beta" in notes[0] and "\n" not in notes[0]


def test_an_old_mm_run_keeps_its_alpha_and_drops_the_b_mm_fields_it_never_read():
    old = {**OLD_BMM_RUN, "augment": {**OLD_BMM_RUN["augment"], "name": "mm", "alpha": 0.5, "stage": "input"}}
    cfg = config_from_dict(old, notes=[])
    assert cfg.augment.args == {"alpha": 0.5}


def test_the_sweep_sees_an_old_layout_run_as_the_same_config():
    from mmvid.sweeps.state import config_difference

    new = resolve_config({**OLD_BMM_RUN, "augment": {"name": "bmm", "args": {"warmup": 2, "beta": 0.4, "rho_split": "val"}}})
    assert config_difference(OLD_BMM_RUN, new) is None
    changed = resolve_config({**OLD_BMM_RUN, "augment": {"name": "bmm", "args": {"warmup": 2, "beta": 0.3, "rho_split": "val"}}})
    assert "augment.args" in config_difference(OLD_BMM_RUN, changed)


def test_an_old_key_on_the_command_line_is_moved_with_one_note(tmp_path, capsys):
    notes: list[str] = []
    cfg = resolve_config("demo", {"augment.name": "bmm", "augment.beta": "0.3"}, notes=notes)
    assert cfg.augment.args["beta"] == 0.3 and notes == [
        "config augment.beta -> augment.bmm.beta (each augmentation's own settings, `mmvid train --list NAME`)"]


def test_mmvids_own_recipes_use_the_new_layout():
    """No recipe of mmvid's prints the old-layout note (each resolves with no note)."""
    for f in sorted(RECIPES.rglob("*.yaml")):
        notes: list[str] = []
        resolve_config(read_recipe(f).config, notes=notes)
        assert notes == [], (f, notes)


def test_core_config_has_no_plug_in_fields_left():
    assert {f.name for f in dataclasses.fields(TrainConfig().augment)} == {"name", "args"}
    assert AUGMENTS.settings("bmm") is not None and BALANCERS.settings("none") is not None


# ----------------------------------------------------------------------------- --list NAME and the docs


def test_list_shows_every_plug_in_and_list_name_its_settings():
    from mmvid.registry import REGISTRIES

    res = runner.invoke(app, ["train", "--list"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for reg in REGISTRIES:
        assert all(n in res.output for n in reg.names()), reg.kind
    assert "prefusion" in res.output and "calibrations" in res.output
    res = runner.invoke(app, ["train", "--list", "ogm-ge"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert re.search(r"^. alpha +. 0\.8 ", res.output, re.M), res.output  # the key, unwrapped, beside its default
    for needle in ("settings under balance.args (--set balance.args.KEY=VALUE)", "0.8", "a finite number in [0, 1000]", "modulation strength", "OGM-GE main.py",
                   "one of: conv, nd, all"):
        assert needle in res.output, needle
    one_line(runner.invoke(app, ["train", "--list", "ogmge"]), "no plug-in named 'ogmge'", "did you mean ogm-ge?")


def test_the_settings_tables_of_the_docs_are_the_declarations():
    """docs/methods.md's settings block is what `python -m mmvid.docs_tables` generates from the Settings;
    a setting added, renamed or given another default without regenerating it fails here."""
    from mmvid.docs_tables import METHODS_MD, main, settings_markdown

    assert settings_markdown() in METHODS_MD.read_text(encoding="utf-8")
    assert main(["--check"]) == 0
    for reg_rows in ("| `alpha` | `0.8` | a finite number in [0, 1000] |", "| `beta` | `0.2` |", "| `hidden` | `64` |"):
        assert reg_rows in settings_markdown(), reg_rows


# ----------------------------------------------------------------------------- every setting of every plug-in


def _cases():
    """(registry, plug-in, setting or None, case, value for --set, value for a recipe, what the line must name)."""
    import typing

    from mmvid.registry import REGISTRIES
    from mmvid.schema import _base_type, field_types, rule_of

    out = []
    for reg in REGISTRIES:
        for name in reg.names():
            cls = reg.settings(name)
            fields = dataclasses.fields(cls)
            if not fields:
                out.append((reg, name, "anything", "unknown", "1", 1, "it has no settings"))
                continue
            types_ = field_types(cls)
            for f in fields:
                tp, rule = types_[f.name], rule_of(f)
                base = _base_type(tp)[0]
                union = [a for a in typing.get_args(tp) if a is not type(None)]
                out.append((reg, name, f.name + "x", "unknown", "1", 1, f"did you mean {reg.args_key}.{f.name}?"))
                # a wrong type: a word for numbers and switches, a number for mappings, a mapping for the rest
                if base in (int, float, bool):
                    wrong_set, wrong_recipe = "maybe", "maybe"
                elif typing.get_origin(base) is dict:
                    wrong_set, wrong_recipe = "5", 5
                else:
                    wrong_set, wrong_recipe = None, {"a": 1}  # every --set value is a string, a valid str
                if len(union) > 1 and str in union:
                    wrong_set = None
                out.append((reg, name, f.name, "type", wrong_set, wrong_recipe, "is not valid for"))
                if rule is not None and rule.choices is not None:
                    bad = 99 if typing.get_origin(base) is list else "bogus"
                    out.append((reg, name, f.name, "range", str(bad), [bad] if bad == 99 else bad, "is not valid for"))
                elif rule is not None and (rule.le is not None or rule.lt is not None):
                    hi = rule.le if rule.le is not None else rule.lt
                    bad = hi + 1 if base is int else hi * 2 + 1
                    out.append((reg, name, f.name, "range", str(bad), bad, "is not valid for"))
    return out


CASES = _cases()


def _select(reg, name) -> tuple[list[str], dict]:
    """The CLI options and the recipe sections that run plug-in ``name`` of ``reg``."""
    flag = {"fusion": ["--fusion", name], "augmentation": ["--aug", name], "balancer": ["--balance", name],
            "calibration": ["--calibrate"], "encoder": ["--encoder", name]}[reg.kind]
    section = {"fusion": ("model", "fusion"), "augmentation": ("augment", "name"), "balancer": ("balance", "name"),
               "calibration": ("model", "calibrate"), "encoder": ("model", "encoder")}[reg.kind]
    return flag, {section[0]: {section[1]: True if reg.kind == "calibration" else name}}


def test_the_walk_covers_every_setting_of_every_plug_in():
    from mmvid.registry import REGISTRIES

    settings = {(reg.kind, n, f.name) for reg in REGISTRIES for n in reg.names() for f in dataclasses.fields(reg.settings(n))}
    unknown = {(reg.kind, n, k[:-1]) for reg, n, k, case, *_ in CASES if case == "unknown" and k != "anything"}
    assert unknown == settings and len(settings) > 100
    ranged = {(reg.kind, n, k) for reg, n, k, case, *_ in CASES if case == "range"}
    assert len(ranged) > 90  # every number and every choice has its bounds


@pytest.mark.parametrize("reg,name,key,case,set_value,recipe_value,needle", CASES,
                         ids=[f"{c[0].kind}-{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_a_bad_setting_is_one_line_through_set_and_through_a_recipe(tmp_path, reg, name, key, case, set_value,
                                                                    recipe_value, needle):
    flag, sections = _select(reg, name)
    names = [f"{reg.args_key}.{key}", f"{reg.kind} {name!r}", needle]
    if set_value is not None:
        one_line(runner.invoke(app, ["train", "-w", str(tmp_path), *flag, "--set", f"{reg.args_key}.{key}={set_value}"]),
                 *names)
    family, field = reg.args_key.split(".")
    sections.setdefault(family, {})[field] = {key: recipe_value}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(sections))
    one_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", str(recipe)]), *names, str(recipe))


def test_the_line_names_where_the_bad_setting_came_from(tmp_path):
    """A misspelled --set on top of a recipe names no recipe; one in the recipe names that recipe."""
    line = one_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", "demo", "--balance", "ogm-ge",
                                        "--set", "balance.args.alpah=0.5"]), "balance.args.alpah")
    assert "recipe" not in line
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: demo\nbalance: {name: ogm-ge, args: {alpah: 0.5}}\n")
    one_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", str(recipe), "--set", "balance.args.alpha=0.3"]),
             "balance.args.alpah", f"(in recipe {recipe})")


def test_a_sweep_with_a_misspelled_setting_fails_before_its_first_run(tiny_ws, tmp_path):
    from rich.console import Console

    from mmvid.sweeps.command import sweep_command

    (tmp_path / "typo.yaml").write_text("extends: proving\ndata: {dataset: demo}\nbalance: {name: ogm-ge, args: {alpah: 0.5}}\n")
    with pytest.raises(MmvidError, match=r"recipe .*typo.yaml: config balance.args.alpah: balancer 'ogm-ge' has no setting"):
        sweep_command(Console(quiet=True), tiny_ws, [str(tmp_path / "typo.yaml")], seeds=1, epochs=1)
    assert not list((tiny_ws / "runs").glob("sweep-*typo*"))
