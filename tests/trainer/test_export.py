"""``radforge export``: a real checkpoint's teacher -> native, hf and timm folders -> its features."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from radforge.cli import main as cli_main
from radforge.trainer import build_network
from radforge.trainer import checkpoint as ckpt
from radforge.trainer.eval.backbone import BackboneLoadError, load_backbone
from radforge.trainer.export import (
    export_backbone,
    load_for_eval,
    random_backbone,
    spec_of,
    teacher_backbone,
    vit_from_spec,
)
from radforge.trainer.loop import run_training
from radforge.trainer.models import VIT_SIZES
from radforge.trainer.run_config import load_train_config
from radforge.trainer.views import to_input
from tests.trainer.support import ingest_tiny, tiny_run
from tests.trainer.test_export_formats import real_batch, real_slices

# Refuses radforge: the export's own copy of the model package must load it with torch + safetensors.
_ISOLATED = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'radforge', 'trainer', 'ingest', 'sharder', 'services', 'bench', 'tests'}:
            raise ImportError('radforge code imported: ' + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import torch
from radforge_vit import load_backbone
model = load_backbone(sys.argv[2])
x = torch.load(sys.argv[3])
f = model(x)
torch.save({'cls': f.cls, 'patches': f.patches}, sys.argv[4])
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Path:
    """A real tiny training run (3 steps) whose last checkpoint is step 3."""
    root = tmp_path_factory.mktemp("export")
    dataset = ingest_tiny(root, str(root / "ds"))
    out = root / "run"
    run_training(tiny_run(dataset, str(out), root, "steps=3", "checkpoint.every=3"))
    return out


def _teacher_features(run: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the checkpoint's teacher through the training code's own modules."""
    ref = ckpt.latest(str(run))
    assert ref is not None
    state = ckpt.load(ref)
    cfg = load_train_config(run / "checkpoints" / ref.location.path.rsplit("/", 1)[-1] / "config.yaml")
    teacher = build_network(cfg.recipe, teacher=True)
    teacher.load_state_dict(state["teacher"])
    teacher.eval()
    with torch.no_grad():
        f = teacher.backbone.forward_features(x)
    return f.cls, f.patches


def test_export_loads_standalone_and_matches_teacher(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert cli_main(["export", str(run), str(out)]) == 0
    config = json.loads((out / "native" / "config.json").read_text())
    assert config["source"]["step"] == 3 and config["architecture"]["embed_dim"] == 96
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "hf", "native", "timm"]

    # 32x32 is the stored grid; 48x40 makes both loaders resample the position table
    for shape in [(3, 1, 32, 32), (2, 1, 48, 40)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        cls, patches = _teacher_features(run, x)
        torch.save(x, tmp_path / "x.pt")
        # the export's radforge_vit package, in a process where radforge cannot be imported
        subprocess.run(
            [
                sys.executable,
                "-c",
                _ISOLATED,
                str(out / "native"),
                str(out),
                str(tmp_path / "x.pt"),
                str(tmp_path / "f.pt"),
            ],
            check=True,
            cwd=tmp_path,
        )
        got = torch.load(tmp_path / "f.pt")
        assert got["cls"].shape == cls.shape and got["patches"].shape == patches.shape
        assert torch.equal(got["cls"], cls) and torch.equal(got["patches"], patches)
        assert not torch.allclose(cls[0], cls[1])  # features depend on the input


def test_hf_and_timm_exports_equal_the_trained_teacher_on_real_slices(run: Path, tmp_path: Path) -> None:
    import timm
    from transformers import AutoImageProcessor, AutoModel

    out = tmp_path / "export"
    result = export_backbone(str(run), str(out), formats=["hf", "timm"])
    assert set(result.formats) == {"hf", "timm"} and result.sha256 == ""
    slices = real_slices()
    processor = AutoImageProcessor.from_pretrained(out / "hf", trust_remote_code=True)
    x = processor([im for im, _ in slices], modality=[m for _, m in slices])["pixel_values"]
    assert torch.equal(x, real_batch(32))  # the training crop size: the export's image_size
    cls, patches = _teacher_features(run, x)
    hf = AutoModel.from_pretrained(out / "hf").eval()
    tm = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True).eval()
    with torch.no_grad():
        hf_out, timm_tokens = hf(pixel_values=x), tm.forward_features(x)
    r = 1 + hf.config.to_dict().get("num_register_tokens", 0)
    for name, got_cls, got_patches in [
        ("hf", hf_out.pooler_output, hf_out.last_hidden_state[:, r:]),
        ("timm", tm(x), timm_tokens[:, tm.num_prefix_tokens :]),
    ]:
        assert (got_cls - cls).abs().max() <= 1e-5, name
        assert (got_patches - patches).abs().max() <= 1e-5, name


def test_export_of_step_folder_equals_run_export(run: Path, tmp_path: Path) -> None:
    step = run / "checkpoints" / "step-00000003"
    a = export_backbone(str(run), str(tmp_path / "a"))
    b = export_backbone(str(step / "state.pt"), str(tmp_path / "b"))
    assert a.step == b.step == 3 and a.sha256 == b.sha256
    model = load_backbone(tmp_path / "b" / "native" / "backbone.safetensors")
    assert model.weights_hash == teacher_backbone(str(step)).frozen().weights_hash
    # what `radforge eval --backbone` and eval jobs take: the export's root, or the checkpoint itself
    assert load_for_eval(str(tmp_path / "a")).weights_hash == model.weights_hash
    assert load_for_eval(str(step)).weights_hash == model.weights_hash


def test_preprocess_matches_training_input_mapping(run: Path, tmp_path: Path) -> None:
    export_backbone(str(run), str(tmp_path / "e"), formats=["native"])
    model = load_backbone(tmp_path / "e")
    rng = np.random.default_rng(0)
    cases = [
        (rng.integers(-2000, 2000, (40, 56)).astype(np.int16), "CT", "raw"),
        (rng.integers(0, 4000, (48, 48)).astype(np.uint16), "MR", "raw"),
        (rng.integers(0, 255, (33, 33)).astype(np.uint8), "CT", "soft_tissue"),
    ]
    for image, modality, window in cases:
        want = to_input(torch.as_tensor(image), modality=modality, window=window)
        want = F.interpolate(want[None, None], size=(32, 32), mode="bilinear", antialias=True)[0]
        assert torch.equal(model.preprocess(image, modality=modality, window=window), want)


@pytest.mark.parametrize("size", sorted(VIT_SIZES))
def test_spec_round_trips_every_size(size: str) -> None:
    with torch.device("meta"):
        vit = VIT_SIZES[size](num_registers=2)
        assert spec_of(vit_from_spec(spec_of(vit))) == spec_of(vit)


def test_random_backbone_is_seeded_and_differs_from_trained(run: Path) -> None:
    trained = teacher_backbone(str(run)).frozen()
    a, b = random_backbone(trained.spec, seed=0), random_backbone(trained.spec, seed=0)
    assert a.weights_hash == b.weights_hash != trained.weights_hash
    assert spec_of(vit_from_spec(trained.spec)) == trained.spec


def test_cli_writes_only_the_requested_formats(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e"
    assert cli_main(["export", str(run), str(out), "--format", "timm", "--format", "native", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["formats"] == {"native": str(out / "native"), "timm": str(out / "timm")}
    assert summary["step"] == 3 and len(summary["sha256"]) == 64
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "native", "timm"]
    with pytest.raises(SystemExit):
        cli_main(["export", str(run), str(out), "--format", "onnx"])
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


def test_truncated_checkpoint_is_named(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad" / "step-00000003"
    shutil.copytree(run / "checkpoints" / "step-00000003", bad)
    state = bad / "state.pt"
    state.write_bytes(state.read_bytes()[:2000])
    assert cli_main(["export", str(bad), str(tmp_path / "out")]) == 1
    assert f"{state} cannot be loaded" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_model_is_named(run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "step-00000003"
    bad.mkdir()
    state = torch.load(run / "checkpoints" / "step-00000003" / "state.pt", weights_only=False)
    cfg = yaml.safe_load(state["config"])
    cfg["recipe"]["model"]["embed_dim"] = 48  # the config now describes a narrower ViT than the weights
    state["config"] = yaml.safe_dump(cfg)
    torch.save(state, bad / "state.pt")
    with pytest.raises(ckpt.CheckpointError, match=rf"{bad}/state\.pt: its teacher does not match"):
        teacher_backbone(str(bad))
    with pytest.raises(ckpt.CheckpointError, match=rf"no checkpoint at {tmp_path / 'nothing'}"):
        teacher_backbone(str(tmp_path / "nothing"))


def test_corrupt_export_is_named(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    export_backbone(str(run), str(out), formats=["native"])
    weights, config = out / "native" / "backbone.safetensors", out / "native" / "config.json"
    good = weights.read_bytes()
    weights.write_bytes(good[:500])
    with pytest.raises(BackboneLoadError, match=rf"{weights} does not match the sha256"):
        load_backbone(out)
    cfg = json.loads(config.read_text())
    cfg["weights"].pop("sha256")
    config.write_text(json.dumps(cfg))
    with pytest.raises(BackboneLoadError, match=rf"{weights} is not a readable safetensors file"):
        load_backbone(out)
    weights.write_bytes(good)
    cfg["architecture"]["depth"] = 2
    config.write_text(json.dumps(cfg))
    with pytest.raises(BackboneLoadError, match=rf"{weights}: weights do not fit the architecture"):
        load_backbone(out)
    cfg["format_version"] = 99
    config.write_text(json.dumps(cfg))
    with pytest.raises(BackboneLoadError, match=rf"{config} has format_version 99"):
        load_backbone(out)
