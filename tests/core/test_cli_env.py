"""``radforge --version`` and ``radforge env``: what users paste into a bug report."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest

from radforge.cli import main


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"radforge {version('radforge')}"


def test_env_reports_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["radforge"] == version("radforge")
    assert report["torch"] == version("torch") and report["ray"] == version("ray")
    assert report["mosaicml-streaming"] == version("mosaicml-streaming")
    assert report["cuda_available"] in {"True", "False"}
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["pydicom", version("pydicom")] for line in lines)
