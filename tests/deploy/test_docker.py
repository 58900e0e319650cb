"""The container image recipe and the shell scripts: linters (hadolint, shellcheck) and our rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.deploy.manifests import DEPLOY, REPO

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
SCRIPTS = sorted([*DEPLOY.rglob("*.sh")])
SECRET_WORDS = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|SALT|ACCESS_KEY|CREDENTIAL|PRIVATE)", re.I)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, args = buffer.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    return out


def dockerfile_problems(text: str) -> list[str]:
    """radforge's rules for its image (docs/deploy.md, "The image")."""
    problems = []
    steps = instructions(text)
    args = {}
    for step in steps:
        if step.keyword == "ARG" and "=" in step.args:
            name, _, value = step.args.partition("=")
            args[name] = value
    stages = [s for s in steps if s.keyword == "FROM"]
    if len(stages) < 2:
        problems.append("not a multi-stage build")
    for stage in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), stage.args.split()[0])
        if not re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(runtime|cudnn-runtime)-ubuntu\d+\.\d+", image):
            problems.append(f"line {stage.line}: base {image} is not a pinned CUDA runtime image")
    names = [s.args.split()[-1] for s in stages if " AS " in s.args.upper()]
    build_stage = names[0] if names else None
    if build_stage is None or not any(
        s.keyword == "COPY" and f"--from={build_stage}" in s.args for s in steps
    ):
        problems.append("the final stage copies nothing from the build stage")
    installs = [s for s in steps if s.keyword == "RUN" and "pip install" in s.args]
    for step in installs:
        for command in re.split(r"&&|;", step.args):
            if "pip install" not in command:
                continue
            targets = [
                w
                for w in command.split("pip install", 1)[1].split()
                if not w.startswith("-") and w != "constraints.txt"
            ]
            if "-c constraints.txt" not in command and not all("==" in t for t in targets):
                problems.append(
                    f"line {step.line}: pip install without constraints.txt or pins: {command.strip()}"
                )
    if not any(". " in s.args + " " and "-c constraints.txt" in s.args for s in installs):
        problems.append("the project is not installed with -c constraints.txt")
    users = [s for s in steps if s.keyword == "USER"]
    if not users or steps.index(users[-1]) < steps.index(stages[-1]):
        problems.append("the final stage sets no USER")
    else:
        user = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), users[-1].args).split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"USER {users[-1].args} is not a numeric non-root uid")
    for step in steps:
        if step.keyword in ("ENV", "ARG") and SECRET_WORDS.search(step.args.split("=")[0]):
            problems.append(f"line {step.line}: {step.keyword} {step.args.split('=')[0]} looks like a secret")
        if step.keyword in ("COPY", "ADD") and re.search(
            r"\.aws|\.env\b|credentials|id_rsa|\.pem", step.args
        ):
            problems.append(f"line {step.line}: copies credentials ({step.args})")
        if step.keyword == "FROM" and ":latest" in step.args:
            problems.append(f"line {step.line}: :latest")
    return problems


def test_dockerfile_follows_our_rules() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("USER ${RADFORGE_UID}:${RADFORGE_UID}", "USER root", "numeric non-root"),
        ("USER ${RADFORGE_UID}:${RADFORGE_UID}", "USER 0:0", "numeric non-root"),
        ("ARG RADFORGE_UID=1000", "ARG RADFORGE_UID=1000\nENV AWS_SECRET_ACCESS_KEY=abc", "secret"),
        ("runtime-ubuntu24.04", "runtime-ubuntu24.04-latest", "CUDA runtime"),
        (
            "/opt/venv/bin/pip install -c constraints.txt --no-deps .",
            "/opt/venv/bin/pip install --no-deps torch .",
            "constraints",
        ),
        ("FROM ${CUDA_IMAGE} AS runtime", "", "multi-stage"),
        ("COPY --from=build /opt/venv /opt/venv", "RUN true", "copies nothing"),
    ],
)
def test_dockerfile_rules_flag_violations(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new))
    assert problems and expected in " ".join(problems)


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(REPO / ".venv" / "bin" / "hadolint"))
    out = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_image_python_satisfies_the_project(tmp_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    version = re.search(r"python3\.(\d+) ", DOCKERFILE.read_text())
    assert version
    assert f"3.{version[1]}" in SpecifierSet(project["requires-python"])


def test_every_copied_path_exists_and_passes_the_dockerignore() -> None:
    patterns = [
        p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    assert patterns[0] == "*", "the context starts empty: only what the image needs is let in"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for step in instructions(DOCKERFILE.read_text()):
        if step.keyword != "COPY" or "--from=" in step.args:
            continue
        *sources, _ = step.args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source in allowed, f"{source} is filtered out by {DOCKERIGNORE.name}"
    for secret in (".venv", ".radforge", ".demo", ".git"):
        assert secret not in allowed


def test_image_ships_the_recipes_the_rayjob_configs_name() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY configs /opt/radforge/configs" in text
    for overlay_config in [*DEPLOY.glob("k8s/**/train.yaml")]:
        recipe = re.search(r"recipe_file: (\S+)", overlay_config.read_text())
        assert recipe and recipe[1].startswith("/opt/radforge/configs/")
        assert (REPO / "configs" / Path(recipe[1]).name).is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shellcheck_passes(script: Path) -> None:
    out = subprocess.run(
        ["shellcheck", "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_shellcheck_catches_a_broken_script(tmp_path: Path) -> None:
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/usr/bin/env bash\nfor f in $(ls *.yaml); do cat $f; done\n")
    out = subprocess.run(["shellcheck", str(broken)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "SC2045" in out.stdout


def test_scripts_are_executable_and_strict() -> None:
    assert SCRIPTS
    for script in SCRIPTS:
        text = script.read_text()
        if text.startswith("#!"):
            assert script.stat().st_mode & 0o111, f"{script} is not executable"
            assert "set -euo pipefail" in text, script
