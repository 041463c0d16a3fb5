"""mmvid as an installed package: the wheel carries recipes/ (as mmvid._recipes, read through importlib.resources),
the dependencies give floors only, ``mmvid recipes`` lists, shows and copies the recipes, and an installed wheel runs
prepare, train, sweep and recipes from a folder outside the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.config import RECIPES, read_recipe
from mmvid.config.catalog import copy_recipes, listing, locate
from mmvid.errors import MmvidError

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
runner = CliRunner()


def test_pyproject_lists_every_package_and_maps_recipes_into_the_wheel():
    tools = PYPROJECT["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mmvid").rglob("__init__.py")}
    assert set(tools["packages"]) == on_disk | {"mmvid._recipes"}
    assert tools["package-dir"] == {"mmvid._recipes": "recipes"}
    assert "**/*.yaml" in tools["package-data"]["mmvid._recipes"] and (REPO / "mmvid" / "py.typed").is_file()


def test_dependencies_give_floors_only_and_declare_what_mmvid_imports():
    deps = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    for req in deps + [r for group in extras.values() for r in group]:
        spec = req.split(";")[0]
        assert "<" not in spec and "==" not in spec and ">=" in spec, req  # a floor, never a cap or a pin
    names = {re.split(r"[<>=;\[ ]", r)[0] for r in deps}
    assert {"torch", "torchvision", "scipy", "decord", "av"} <= names
    decord = next(r for r in deps if r.startswith("decord"))
    assert ";" in decord and "platform_machine" in decord  # installed only where decord publishes wheels
    assert {"tensorboard", "wandb", "timm", "docs", "dev"} <= set(extras)
    assert any(r.startswith("mkdocs-material>=9") for r in extras["docs"])
    assert {re.split(r"[<>=]", r)[0] for r in extras["dev"]} >= {"pytest", "tensorboard", "wandb", "mkdocs", "mkdocs-material", "ruff"}


def test_recipes_are_read_through_importlib_resources():
    assert RECIPES == Path(str(resources.files("mmvid._recipes"))).resolve()
    assert (RECIPES / "demo.yaml").is_file() and read_recipe("table1/cremad/01-concat").paper["accuracy"] == 60.62


def test_recipes_read_from_a_zipped_mmvid(tmp_path):
    """From a zip (zipimport), the recipes are a Traversable; they are copied once into a real folder, so that a
    recipe and the bases it extends by name resolve as they do from a checkout or a wheel."""
    archive = tmp_path / "mmvid.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (REPO / "mmvid").rglob("*.py"):
            z.write(f, f.relative_to(REPO).as_posix())
        for f in RECIPES.rglob("*"):
            if f.is_file():
                z.write(f, "mmvid/_recipes/" + f.relative_to(RECIPES).as_posix())
    code = ("import mmvid.config as c; r = c.read_recipe('table1/cremad/09-concat-bmm'); "
            "print(c.__file__); print(c.RECIPES); print(r.paper['accuracy'], r.config['augment']['name'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(archive)}, check=True).stdout.splitlines()
    want = read_recipe("table1/cremad/09-concat-bmm")
    assert out[0].startswith(str(archive)) and not out[1].startswith(str(REPO))
    assert out[2] == f"{want.paper['accuracy']} {want.config['augment']['name']}"


def test_listing_names_the_tables_zoo_and_datasets():
    names = listing()
    assert {"demo", "cremad", "methods/bmm", "table1/cremad/01-concat"} <= set(names)
    assert any(n.startswith("zoo/") for n in names)
    assert names["table1/cremad/01-concat"] == "Paper Table 1, Concat on CREMA-D."
    assert set(listing("table1/cremad")) == {n for n in names if n.startswith("table1/cremad/")}
    assert locate("recipes/table1/cremad") == locate("table1/cremad") and locate("demo.yaml") == locate("demo")


@pytest.mark.parametrize("name", ["../pyproject", "/etc/passwd", "table1/../../mmvid", "nonexistent"])
def test_a_recipe_name_never_leaves_the_recipes_folder(name):
    with pytest.raises(MmvidError, match="mmvid recipes"):
        locate(name)


def test_copy_keeps_names_skips_its_own_copies_and_never_overwrites_an_edited_file(tmp_path):
    written = copy_recipes("table1/cremad", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == \
        sorted(f"{n}.yaml" for n in listing("table1/cremad"))
    assert copy_recipes("table1/cremad", tmp_path) == []  # the same files again: nothing to write
    # a copied recipe resolves its bases (extends: cremad) from mmvid's recipes
    copy = tmp_path / "table1/cremad/01-concat.yaml"
    assert read_recipe(copy).config == read_recipe("table1/cremad/01-concat").config
    edited = copy.read_text() + "epochs: 3\n"
    copy.write_text(edited)
    (tmp_path / "table1/cremad/02-sum.yaml").unlink()
    with pytest.raises(MmvidError, match="01-concat.yaml already exists and differs"):
        copy_recipes("table1/cremad", tmp_path)
    assert copy.read_text() == edited and not (tmp_path / "table1/cremad/02-sum.yaml").exists()  # nothing written


def test_cli_recipes_lists_shows_and_copies(tmp_path):
    res = runner.invoke(app, ["recipes"])
    assert res.exit_code == 0 and "table1/cremad/01-concat" in res.output and "zoo/" in res.output
    res = runner.invoke(app, ["recipes", "demo"])
    assert res.exit_code == 0 and res.output == (RECIPES / "demo.yaml").read_text()
    res = runner.invoke(app, ["recipes", "demo", "--copy", "-w", str(tmp_path)])
    assert res.exit_code == 0 and (tmp_path / "recipes/demo.yaml").read_text() == (RECIPES / "demo.yaml").read_text()
    res = runner.invoke(app, ["recipes", "../secrets"])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output


def test_python_api_recipes(tmp_path):
    import mmvid

    assert mmvid.recipes("demo") == (RECIPES / "demo.yaml").read_text()
    assert "methods/bmm" in mmvid.recipes("methods")
    assert mmvid.recipes("methods/bmm", copy=True, workspace=tmp_path) == [tmp_path / "recipes/methods/bmm.yaml"]


@pytest.mark.slow
def test_the_wheel_runs_from_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a fresh venv whose other packages (torch included) come from this
    environment's site-packages (nothing downloaded), then run mmvid from a folder outside the checkout."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, text=True)
    wheel = next(dist.glob("mmvid-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        inside = set(z.namelist())
    assert {"mmvid/_recipes/demo.yaml", "mmvid/_recipes/table1/cremad/01-concat.yaml", "mmvid/py.typed"} <= inside
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this environment's packages come after the venv's own (the wheel's mmvid), as a path, not as a site dir:
    # this environment's editable mmvid (a .pth of its own) is not imported from there
    Path(site, "reuse-test-env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MMVID_HOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    transcript = []

    def run(*cmd: str) -> str:
        res = subprocess.run(list(cmd), cwd=outside, env=env, capture_output=True, text=True)
        transcript.append(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}(exit {res.returncode})")
        print(transcript[-1])
        assert res.returncode == 0, transcript[-1]
        return res.stdout

    where = run(str(py), "-c", "import mmvid, mmvid.config as c; print(mmvid.__file__); print(c.RECIPES)")
    assert all(line.startswith(site) for line in where.split())  # the wheel's mmvid and its recipes, not the checkout
    run(sys.executable, "-m", "pip", "--python", str(py), "check")  # every declared dependency is there
    run("mmvid", "prepare", "demo", "--clips", "40")
    out = run("mmvid", "train", "--recipe", "demo", "--epochs", "1")
    assert "Traceback" not in out and any((outside / "mmvid-workspace" / "runs").iterdir())
    out = run("mmvid", "sweep", "table1/cremad", "--dry-run")
    assert "01-concat" in out or "concat" in out
    out = run("mmvid", "recipes")
    assert "table1/cremad/01-concat" in out
    assert not (outside / "recipes").exists()  # nothing written beside the user's files but the workspace
