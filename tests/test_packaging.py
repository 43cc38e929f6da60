"""The package as pip installs it: the wheel holds every subpackage and the configs, and a
non-editable install, run from another folder without the test extra (what `make demo`
installs), runs the demo's quick mode."""

import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from test_train import REPO, subprocess_env

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def test_the_package_list_names_every_subpackage_and_the_configs():
    setuptools = PYPROJECT["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "viewpoint_jax").rglob("__init__.py")
    }
    # The committed checkpoint's folders ship as data; those named like packages are listed too
    # (setuptools warns about each one left out). A name with a dot is no package name.
    data_folders = set()
    for folder in (REPO / "viewpoint_jax" / "assets").rglob("*"):
        parts = folder.relative_to(REPO).parts
        if (
            folder.is_dir()
            and all(part.isidentifier() for part in parts)
            and any(child.is_file() for child in folder.iterdir())
        ):
            data_folders.add(".".join(parts))
    assert data_folders >= {"viewpoint_jax.assets.tiny_perspective"}
    assert set(setuptools["packages"]) == on_disk | {"viewpoint_jax.configs"} | data_folders
    assert setuptools["package-dir"] == {"viewpoint_jax.configs": "configs"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install --no-deps --target` of a wheel built from a copy of the checkout (the build
    writes build/ and *.egg-info beside its sources): the folder to put on the path."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("viewpoint_jax", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("viewpoint_jax-*.whl")
    target = tmp / "site"
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return target


# The test extra's libraries (pyproject.toml; each imports under its distribution's name), which
# `make demo` does not install: the demo must run without them.
TEST_EXTRA_LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "py360convert",
    "safetensors",
    "libtpu",
)


def installed_env(target: Path, blocked: Path) -> dict:
    """This interpreter's dependencies, with the installed package first on the path and the
    test extra's libraries made unimportable (modules in `blocked` that raise ImportError)."""
    blocked.mkdir()
    for module in TEST_EXTRA_LIBRARIES:
        (blocked / f"{module}.py").write_text(
            f"raise ImportError('{module} is in the test extra, which make demo does not install')"
        )
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocked), str(target), env["PYTHONPATH"]])
    return env


def test_the_blocked_modules_are_the_test_extra():
    names = {re.split(r"[<>=!~ \[]", requirement)[0] for requirement in EXTRAS["test"]}
    assert set(TEST_EXTRA_LIBRARIES) == names - {"pytest", "pytest-xdist", "ruff"}


def test_the_wheel_ships_the_configs(installed):
    configs = sorted(p.name for p in (installed / "viewpoint_jax" / "configs").glob("*.py"))
    assert configs == sorted(p.name for p in (REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("script", PYPROJECT["project"]["scripts"])
def test_console_scripts_are_installed_and_resolve(installed, script):
    module, _, function = PYPROJECT["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    assert (installed / "bin" / script).is_file()


def test_an_installed_console_script_answers_help(installed, tmp_path):
    result = subprocess.run(
        [str(installed / "bin" / "viewpoint-prepare"), "--help"],
        cwd=tmp_path, env=installed_env(installed, tmp_path / "blocked"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Builds a panoramic dataset")
    assert "--[no]dry_run:" in result.stdout and "--workers:" in result.stdout
    assert "tfds" not in result.stdout  # the program's flags, not its libraries'


@pytest.mark.slow
def test_a_non_editable_install_runs_the_quick_demo_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = installed_env(installed, tmp_path / "blocked")
    where = subprocess.run(
        [sys.executable, "-c", "import viewpoint_jax; print(viewpoint_jax.__file__); import torch"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
    assert "torch is in the test extra" in where.stderr
    result = subprocess.run(
        [sys.executable, "-m", "viewpoint_jax.demo", "--quick", "--out", "demo_output"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = elsewhere / "demo_output"
    for name in ("loss_curve.png", "evaluation.json", "sample/pano.mp4", "sample/viewer.html"):
        assert (out / name).is_file(), name
