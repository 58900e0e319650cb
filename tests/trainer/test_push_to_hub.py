"""``radforge export --push-to-hub``: a real export uploaded with huggingface_hub to a local Hub stand-in.

The stand-in (tests/trainer/hub_stand_in.py) implements the endpoints ``create_repo`` and
``upload_folder`` call (create, README metadata check, preupload, the Git LFS batch API and
upload, commit) and stores what arrives; the test compares that with the export folder byte for
byte. It stands in for the Hub as moto does for S3: what it does not implement (Xet, multipart
LFS, PRs) answers 404 and fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from radforge.trainer.export import ExportError, export_backbone
from radforge.trainer.export_formats import push_to_hub
from radforge.trainer.loop import run_training
from tests.trainer.hub_stand_in import HubServer, HubStandIn
from tests.trainer.support import ingest_tiny, tiny_run

TOKEN = "hf_stand_in_token_0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Path:
    """A 1-step tiny training run (its checkpoint is what `radforge export` reads)."""
    root = tmp_path_factory.mktemp("push")
    dataset = ingest_tiny(root, str(root / "dataset"))
    out = root / "run"
    run_training(tiny_run(dataset, str(out), root, "steps=1"))
    return out


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    with HubServer(tmp_path / "hub", token=TOKEN) as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)  # push_to_hub passes it to HfApi
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield stand_in


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _export(run: Path, out: Path, hub: HubStandIn, *args: str) -> subprocess.CompletedProcess[str]:
    """``radforge export RUN OUT ARGS`` in a new process: huggingface_hub reads HF_ENDPOINT at import."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "radforge.cli", "export", str(run), str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_export_pushes_every_format_to_the_hub(run: Path, hub: HubStandIn, tmp_path: Path) -> None:
    out = tmp_path / "export"
    done = _export(run, out, hub, "--push-to-hub", "radforge/tiny", "--private", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.splitlines()[-1])

    exported = _files(out)
    assert {"README.md", "native/config.json", "hf/model.safetensors", "timm/config.json"} <= set(exported)
    assert hub.repo_files("radforge/tiny") == exported  # every file, byte for byte
    assert hub.repos == {"radforge/tiny": True}
    (commit,) = hub.commits
    assert commit.summary == "radforge export"
    lfs = {p for p, mode in commit.files.items() if mode == "lfs"}
    assert lfs == {p for p in exported if p.endswith(".safetensors")} and len(lfs) == 3  # native, hf, timm
    assert printed["hub"]["repo_id"] == "radforge/tiny"
    assert printed["hub"]["commit_url"] == f"{hub.url}/radforge/tiny/commit/{printed['hub']['commit']}"
    assert not hub.unhandled
    # the weights went through the LFS upload, each once, under its sha256
    puts = sorted(path for method, path in hub.calls if method == "PUT")
    assert puts == sorted({f"/lfs/{hashlib.sha256(exported[p]).hexdigest()}" for p in lfs})

    # pushed again into the existing repo: created once, weights already stored (no second upload)
    calls = len(hub.calls)
    done = _export(run, out, hub, "--push-to-hub", "radforge/tiny")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hub commit" in done.stdout
    assert len(hub.commits) == 2 and hub.repo_files("radforge/tiny") == _files(out)
    assert not [c for c in hub.calls[calls:] if c[0] == "PUT"] and not hub.unhandled


def test_a_refused_token_is_named_and_not_shown(
    run: Path, hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = export_backbone(str(run), str(tmp_path / "export"), formats=["native"]).folder
    wrong = "hf_wrong_token_9876543210"
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(
        ExportError, match=r"--push-to-hub radforge/tiny at http://127\.0\.0\.1:\d+: HTTP 401"
    ) as err:
        push_to_hub(folder, "radforge/tiny")
    assert wrong not in str(err.value) and not hub.repos and not hub.commits


def test_only_a_local_folder_is_pushed() -> None:
    with pytest.raises(ExportError, match=r"'s3://bucket/export' is not local"):
        push_to_hub("s3://bucket/export", "radforge/tiny")
