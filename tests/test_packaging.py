"""The built wheel installs one import namespace, ``radforge``, with every package and the dashboard assets.

The wheel is built from a copy of the sources (pyproject.toml, README.md, the core package and the
stage folders) with the venv's setuptools, without build isolation (no index is needed): building
in the checkout would reuse ``build/lib``, where a module deleted since the last build lingers.
It is then installed, without dependencies, into a new venv whose only link to the project's venv
is a ``.pth`` line naming its site-packages (for the dependencies): ``.pth`` files found there are
not run, so the project's editable install of radforge is not seen, and ``radforge --help`` runs
the installed wheel's code.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SOURCES = ["radforge", "ingest", "sharder", "trainer", "services"]
DASHBOARD = ["index.html", "app.js", "app.css"]
DIST_INFO = f"radforge-{PYPROJECT['project']['version']}.dist-info"


def package_folders() -> set[str]:
    """Every folder holding files (modules, dashboard assets) under the core package and the stage
    folders, as a dotted name."""
    dirs = PYPROJECT["tool"]["setuptools"]["package-dir"]
    names = set()
    for package, folder in dirs.items():
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                names.add(".".join([package, *path.parent.relative_to(REPO / folder).parts]))
    return names


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """setuptools' package-dir mapping needs the packages listed: a folder missing there is not installed."""
    missing = package_folders() - set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in SOURCES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out)]
        + ["."],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("radforge-*.whl")
    return built


def test_the_wheel_holds_one_namespace_with_every_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"radforge", DIST_INFO}
    folders = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if not n.startswith(DIST_INFO)}
    assert folders == package_folders()
    for asset in DASHBOARD:
        assert f"radforge/services/app/dashboard/{asset}" in names


def test_the_console_script_is_the_cli(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(z.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"radforge": "radforge.cli:main"}


def test_the_installed_wheel_runs_radforge_help(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (purelib / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util as u; print(u.find_spec('radforge') is None)"
    # run outside the checkout: a script's folder (here the working directory) comes first on sys.path
    seen = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert seen.stdout.strip() == "True", "the new venv must not see the project's editable radforge"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    installed = {p.name for p in purelib.iterdir()} - {"project-dependencies.pth", "__pycache__"}
    assert installed == {"radforge", DIST_INFO}
    where = subprocess.run(
        [str(python), "-c", "import radforge.ingest as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=tmp_path,
    )
    assert where.stdout.strip() == str(purelib / "radforge" / "ingest" / "__init__.py")
    result = subprocess.run(
        [str(venv / "bin" / "radforge"), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "usage: radforge" in result.stdout and "ingest" in result.stdout and "train" in result.stdout
