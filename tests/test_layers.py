"""The import layers hold: import-linter's contracts (pyproject.toml) pass on the tree and fail on a
deliberately added back-edge; no stage imports another stage's private names (an AST check, for
import-linter has no contract for names).

import-linter analyses an importable package, and setuptools' editable finder does not show the
stage folders as ``radforge.<stage>`` to it: like ``make lint``, the checks run on a tree of links
laid out as the installed namespace (``radforge/`` with each stage folder linked in).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "sharder", "trainer", "services")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def link_tree(root: Path) -> Path:
    """``root/radforge``: links to the core package's entries and to the stage folders."""
    package = root / "radforge"
    package.mkdir(parents=True)
    for entry in (REPO / "radforge").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for stage in STAGES:
        (package / stage).symlink_to(REPO / stage)
    return package


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layer_contracts_hold(tmp_path: Path) -> None:
    link_tree(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_a_back_edge_from_the_core_breaks_the_contract(tmp_path: Path) -> None:
    package = link_tree(tmp_path)
    storage = package / "storage.py"
    storage.unlink()
    storage.write_text((REPO / "radforge" / "storage.py").read_text() + "\nimport radforge.ingest.pipeline\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "radforge.storage -> radforge.ingest.pipeline" in result.stdout
    assert "Contracts: 0 kept, 1 broken." in result.stdout


def test_a_sideways_edge_between_ingest_and_trainer_breaks_the_contract(tmp_path: Path) -> None:
    package = link_tree(tmp_path)
    (package / "trainer").unlink()
    trainer = package / "trainer"
    trainer.mkdir()
    for entry in (REPO / "trainer").iterdir():
        (trainer / entry.name).symlink_to(entry)
    (trainer / "uses_ingest.py").write_text("from radforge.ingest.config import IngestConfig\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "radforge.trainer.uses_ingest -> radforge.ingest.config" in result.stdout


def test_a_core_module_outside_every_layer_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is exhaustive: a new module of radforge/ must be given its layer."""
    package = link_tree(tmp_path)
    (package / "unplaced.py").write_text('"""A new core module nobody placed in a layer."""\n')
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "radforge.unplaced" in result.stdout


def _unit(module: str) -> str:
    """The stage or core module a dotted ``radforge.*`` name belongs to (``radforge.ingest.x`` -> ingest)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules(package: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def foreign_private_imports(package: Path) -> list[str]:
    """``module:line -> target`` for each import of another stage's (or core module's) private names."""
    found = []
    for module, path in _modules(package):
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [(base, alias.name) for alias in node.names]
            for target, name in targets:
                if not target.startswith("radforge") or _unit(target) == _unit(module):
                    continue
                if any(_private(p) for p in target.split(".")) or (name is not None and _private(name)):
                    found.append(f"{module}:{node.lineno} -> {target}{'.' + name if name else ''}")
    return found


def test_no_stage_imports_another_stages_private_names(tmp_path: Path) -> None:
    assert foreign_private_imports(link_tree(tmp_path)) == []


def test_the_private_name_check_finds_one(tmp_path: Path) -> None:
    package = link_tree(tmp_path)
    (package / "services").unlink()
    (package / "services").mkdir()
    (package / "services" / "__init__.py").write_text("")
    (package / "services" / "peek.py").write_text(
        "from radforge.ingest.pipeline import _plan, run_ingest\n"
        "import radforge.sharder._hidden\n"
        "from ._own import _fine\n"
        "from radforge.services.app import _also_fine\n"
    )
    assert foreign_private_imports(package) == [
        "radforge.services.peek:1 -> radforge.ingest.pipeline._plan",
        "radforge.services.peek:2 -> radforge.sharder._hidden",
    ]
