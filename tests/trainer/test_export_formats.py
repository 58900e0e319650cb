"""Export formats: native (the shipped model package), transformers, timm and torch.hub: the ViT's features.

Tiny ViTs with random, non-trivial weights (every parameter drawn, LayerScale far from its init) in
each architectural variant; inputs are real slices (nibabel's anatomical MR volume, pydicom's CT
slice) through the one preprocessing function. Features must equal the training class's within
1e-5 in fp32 (they are bit-equal in practice).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from radforge.trainer.export import (
    FORMATS,
    PACKAGE,
    TRAINING_ONLY,
    TeacherBackbone,
    model_sources,
    write_export,
)
from radforge.trainer.export_formats import ExportError, hf_config, hf_state, timm_config, timm_state
from radforge.trainer.models import VIT_SIZES, VisionTransformer, load_backbone, preprocess, spec_of

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[2]
SIZE = 32  # stored grid 4 x 4 at patch 8
TOL = 1e-5
PREPROCESSING = {"ct_air_hu": -1000.0, "image_size": SIZE}

# (ffn, registers, layerscale, qkv_bias): DINOv2 / Curia-2 B/L (SwiGLU), registers, and the options
VARIANTS = {
    "mlp": dict(ffn_layer="mlp"),
    "swiglu-registers": dict(ffn_layer="swiglu", num_registers=4),
    "mlp-registers-no-layerscale-no-qkv-bias": dict(num_registers=1, layerscale_init=None, qkv_bias=False),
}


def real_slices() -> list[tuple[np.ndarray, str]]:
    """Stored-dtype slices of real scans: three MR slices (int16, 33 x 41) and a CT slice (HU, 128 x 128)."""
    mr = np.asarray(nib.load(Path(str(data_path)) / "anatomical.nii").dataobj).astype(np.int16)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ct.pixel_array.astype(np.float64) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    hu = hu.astype(np.int16)
    return [(mr[:, :, k], "MR") for k in (6, 12, 18)] + [(hu, "CT")]


def real_batch(size: int = SIZE) -> torch.Tensor:
    return torch.stack([preprocess(im, modality=m, size=size) for im, m in real_slices()])


def random_vit(variant: str) -> VisionTransformer:
    torch.manual_seed(0)
    kwargs = dict(img_size=SIZE, patch_size=8, embed_dim=48, depth=2, num_heads=3) | VARIANTS[variant]
    vit = VisionTransformer(**kwargs).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0.0, 0.2)
    return vit


def export(vit: VisionTransformer, out: Path, formats: tuple[str, ...] = FORMATS) -> None:
    state = {k: v for k, v in vit.state_dict().items() if k not in TRAINING_ONLY}
    source = {"checkpoint": "random", "step": 0}
    write_export(TeacherBackbone(spec_of(vit), state, dict(PREPROCESSING), source), str(out), formats=formats)


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, name
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"{name}: max abs diff {diff}"


def all_tokens(vit: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        f = vit.forward_features(x)
    assert not torch.allclose(f.cls[0], f.cls[1])  # the features depend on the slice
    return f.cls, f.patches


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[VisionTransformer, Path]:
    vit = random_vit(request.param)
    out = tmp_path_factory.mktemp(request.param)
    export(vit, out)
    return vit, out


def test_transformers_model_equals_teacher(exported: tuple[VisionTransformer, Path]) -> None:
    from transformers import AutoConfig, AutoModel

    vit, out = exported
    model = AutoModel.from_pretrained(out / "hf").eval()
    want = "Dinov2WithRegistersModel" if vit.num_registers else "Dinov2Model"
    assert type(model).__name__ == want
    assert AutoConfig.from_pretrained(out / "hf").use_swiglu_ffn == (spec_of(vit).ffn == "swiglu")
    x = real_batch()
    cls, patches = all_tokens(vit, x)
    with torch.no_grad():
        o = model(pixel_values=x)
    assert_close("hf cls", o.pooler_output, cls)
    assert_close("hf patches", o.last_hidden_state[:, 1 + vit.num_registers :], patches)


def test_timm_model_equals_teacher(exported: tuple[VisionTransformer, Path]) -> None:
    import timm

    vit, out = exported
    model = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True).eval()
    assert isinstance(model, timm.models.VisionTransformer)
    x = real_batch()
    cls, patches = all_tokens(vit, x)
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model(x)
    assert_close("timm cls", pooled, cls)
    assert_close("timm patches", tokens[:, model.num_prefix_tokens :], patches)
    assert model.pretrained_cfg["input_size"] == (1, SIZE, SIZE)


def test_native_and_torch_hub_equal_teacher_at_two_sizes(exported: tuple[VisionTransformer, Path]) -> None:
    vit, out = exported
    native = load_backbone(out)
    hub = torch.hub.load(str(REPO), "radforge_vit", source="local", weights=str(out / "native"))
    for size in (SIZE, 48):  # 48: positions resampled from the stored 4 x 4 grid
        x = real_batch(size)
        cls, patches = all_tokens(vit, x)
        for name, model in (("native", native), ("torch.hub", hub)):
            f = model(x)
            assert_close(f"{name} cls {size}", f.cls, cls)
            assert_close(f"{name} patches {size}", f.patches, patches)


def test_plain_dinov2_resamples_positions_like_radforge(tmp_path: Path) -> None:
    from transformers import AutoModel

    vit = random_vit("mlp")
    export(vit, tmp_path, formats=("hf",))
    model = AutoModel.from_pretrained(tmp_path / "hf").eval()
    x = real_batch(48)
    cls, _ = all_tokens(vit, x)
    with torch.no_grad():
        assert_close("hf cls at 48", model(pixel_values=x).pooler_output, cls)


def test_image_processor_round_trip_is_radforge_preprocessing(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    export(random_vit("mlp"), tmp_path, formats=("hf",))
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert type(processor).__name__ == "RadforgeImageProcessor" and processor.image_size == SIZE
    slices = real_slices()
    got = processor([im for im, _ in slices], modality=[m for _, m in slices], return_tensors="pt")
    assert torch.equal(got["pixel_values"], real_batch())
    single = processor(slices[-1][0])["pixel_values"]  # the saved defaults: CT, raw
    assert torch.equal(single[0], preprocess(slices[-1][0], modality="CT", size=SIZE))
    processor.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "preprocessor_config.json").read_text())
    assert saved["image_size"] == SIZE and saved["ct_air_hu"] == -1000.0


def test_native_export_ships_the_model_package_verbatim(tmp_path: Path) -> None:
    vit = random_vit("swiglu-registers")
    export(vit, tmp_path, formats=("native",))
    shipped = tmp_path / "native" / PACKAGE
    models = REPO / "trainer" / "models"
    assert {p.name: p.read_bytes() for p in shipped.glob("*.py")} == model_sources()
    files = {p.name: p.read_bytes() for p in models.glob("*.py")}
    assert model_sources() == {k: v for k, v in files.items() if k != "image_processor.py"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "native"]
    # in a process that cannot import radforge (nor transformers): the copied package alone
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'radforge', 'transformers', 'timm'}:\n"
        "            raise ImportError('refused: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import torch\n"
        "from radforge_vit import load_backbone\n"
        "torch.save(load_backbone(sys.argv[1])(torch.load(sys.argv[2])).cls, sys.argv[3])\n"
    )
    x = real_batch()
    torch.save(x, tmp_path / "x.pt")
    args = [str(tmp_path / "native"), str(tmp_path / "x.pt"), str(tmp_path / "f.pt")]
    subprocess.run([sys.executable, "-c", script, *args], check=True, cwd=tmp_path)
    assert_close("isolated native cls", torch.load(tmp_path / "f.pt"), all_tokens(vit, x)[0])


def test_model_package_imports_only_torch_numpy_safetensors() -> None:
    """What lets the native export carry trainer/models as is (image_processor.py is the hf/ file)."""
    allowed = {"__future__", "collections", "dataclasses", "hashlib", "json", "math", "pathlib", "typing"}
    allowed |= {"torch", "numpy", "safetensors"}
    for path in sorted((REPO / "trainer" / "models").glob("*.py")):
        if path.name == "image_processor.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module and node.module.split(".")[0] in allowed, f"{path.name}: {node.module}"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), path.name


def test_what_a_format_cannot_express_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=SIZE, patch_size=8, embed_dim=48, depth=1, num_heads=3, ffn_bias=False)
    spec = spec_of(vit)
    with pytest.raises(ExportError, match="hf: ffn_bias=False"):
        hf_config(spec)
    with pytest.raises(ExportError, match="timm: ffn_bias=False"):
        timm_config(spec, PREPROCESSING)
    with pytest.raises(ExportError, match=r"unknown export format\(s\) \['onnx'\]"):
        export(random_vit("mlp"), tmp_path, formats=("onnx",))
    assert not any(tmp_path.iterdir())


def test_readme_snippet_runs_on_an_export(tmp_path: Path) -> None:
    """README's "use the model in your own code" lines, as written, on an export and a real CT slice."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Use the model in your own code") :]
    start = section.index("```python") + len("```python")
    code = section[start : section.index("```\n", start)]
    vit = random_vit("mlp")
    export(vit, tmp_path, formats=("hf",))
    hu = real_slices()[-1][0]
    scope: dict[str, object] = {"slice_hu": hu}
    exec(code.replace('"OUT/', f'"{tmp_path}/'), scope)
    with torch.no_grad():
        want = vit(preprocess(hu, modality="CT", size=SIZE)[None])
    assert_close("README cls", scope["cls"], want)  # type: ignore[arg-type]


def test_loading_leaves_torch_random_state_alone(tmp_path: Path) -> None:
    """The frozen backbone is built on the meta device: loading draws no random init."""
    export(random_vit("swiglu-registers"), tmp_path, formats=("native",))
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    model = load_backbone(tmp_path)
    assert torch.equal(torch.rand(3), want)
    assert not any(p.is_meta or p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
@pytest.mark.parametrize("size", sorted(VIT_SIZES))
def test_every_size_maps_to_same_shaped_transformers_and_timm_models(size: str, ffn: str) -> None:
    """Every width's FFN survives each library's int() rounding (the ViT-L SwiGLU width is 2736)."""
    import timm
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    with torch.device("meta"):
        vit = VIT_SIZES[size](ffn_layer=ffn, num_registers=4)
        spec = spec_of(vit)
        state = {k: v for k, v in vit.state_dict().items() if k not in TRAINING_ONLY}
        cfg = {k: v for k, v in hf_config(spec).items() if k not in ("architectures", "model_type")}
        hf = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**cfg))
        t = timm_config(spec, {"ct_air_hu": -1000.0, "image_size": spec.img_size})
        tm = timm.create_model(t["architecture"], pretrained=False, **t["model_args"])
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert hf_shapes == {k: tuple(v.shape) for k, v in hf_state(spec, state).items()}
    assert {k: tuple(v.shape) for k, v in tm.state_dict().items()} == {
        k: tuple(v.shape) for k, v in timm_state(spec, state).items()
    }
