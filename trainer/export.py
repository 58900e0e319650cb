"""``radforge export``: a training checkpoint's teacher backbone for radforge, transformers and timm.

Output folder (local path or object-store URI), one subfolder per format (``--format``, default all)::

    OUT/README.md                  how to load each format
    OUT/native/backbone.safetensors  the teacher ViT's weights (names as
                                   radforge.trainer.models.VisionTransformer; no mask token, no heads)
    OUT/native/config.json         {"format": "radforge-backbone", "format_version": 1,
                                    "architecture": {...}, "preprocessing": {...},
                                    "weights": {"file", "sha256", "state_hash"}, "source": {...}}
    OUT/native/radforge_vit/       a verbatim copy of radforge.trainer.models: loads the folder with
                                   torch, numpy and safetensors only (the one ViT, not a re-implementation)
    OUT/hf/                        transformers Dinov2Model (or Dinov2WithRegistersModel) + image processor
    OUT/timm/                      timm VisionTransformer: config.json (model_args, pretrained_cfg) + weights

Each format's ``config.json`` is written last: a folder without it is an export that did not finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

import radforge.trainer.models as models_package
from radforge.storage import Location, exists, redact, resolve, write_bytes_atomic
from radforge.trainer import checkpoint as ckpt
from radforge.trainer.build import build_backbone
from radforge.trainer.export_formats import ExportError, write_hf, write_timm
from radforge.trainer.models.backbone import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    TRAINING_ONLY,
    WEIGHTS,
    BackboneSpec,
    FrozenBackbone,
    native_folder,
    spec_of,
    state_hash,
    vit_from_spec,
)
from radforge.trainer.recipe import RecipeConfig
from radforge.trainer.run_config import run_provenance

logger = logging.getLogger(__name__)

FORMATS = ("native", "hf", "timm")
PACKAGE = "radforge_vit"  # the model package's name inside a native export
# Model files the native export ships; image_processor.py needs transformers and goes to hf/ only.
_SHIPPED_EXCLUDE = ("image_processor.py",)


@dataclass(frozen=True)
class TeacherBackbone:
    """A checkpoint's teacher backbone, ready to export or evaluate."""

    spec: BackboneSpec
    state: dict[str, torch.Tensor]  # weights, names as radforge.trainer.models.VisionTransformer
    preprocessing: dict[str, Any]  # input mapping the run trained with
    source: dict[str, Any]  # checkpoint URI and step, the run's datasets, configured steps, config hash

    def frozen(self) -> FrozenBackbone:
        """The frozen module with these weights."""
        where = str(self.source["checkpoint"])
        pre = self.preprocessing
        model = FrozenBackbone.from_state(self.spec, self.state, where=where, preprocessing=pre)
        model.source = dict(self.source)
        return model


@dataclass(frozen=True)
class ExportResult:
    """Where an export went: its root folder and one subfolder per written format."""

    folder: str
    step: int
    sha256: str  # of the native weights file ("" when native was not written)
    formats: dict[str, str]  # format -> its folder's URI


def random_backbone(
    spec: BackboneSpec, *, seed: int = 0, preprocessing: dict[str, Any] | None = None
) -> FrozenBackbone:
    """A random-init backbone of ``spec``'s shape, initialised as training starts (the baseline)."""
    torch.manual_seed(seed)
    vit = vit_from_spec(spec)
    state = {k: v for k, v in vit.state_dict().items() if k not in TRAINING_ONLY}
    where = f"random init (seed {seed})"
    return FrozenBackbone.from_state(spec, state, where=where, preprocessing=preprocessing)


def _recipe(saved: dict[str, Any], *, where: str) -> RecipeConfig:
    try:
        tree = yaml.safe_load(saved["config"])
        return RecipeConfig.model_validate(tree["recipe"])
    except Exception as err:  # missing key, bad YAML, a recipe this version does not understand
        raise ckpt.CheckpointError(
            f"checkpoint {where} has no usable run config ({type(err).__name__}: {err})"
        ) from err


def teacher_backbone(checkpoint: str) -> TeacherBackbone:
    """The teacher backbone of a checkpoint; :class:`CheckpointError` names a bad or foreign one.

    ``checkpoint``: a run output, a step folder or a ``state.pt``
    (:func:`radforge.trainer.checkpoint.resolve_checkpoint`), plain or sharded (FSDP2 / DCP: the teacher is
    read whole from the shards, without a process group).
    """
    ref = ckpt.resolve_checkpoint(checkpoint)
    where = ref.location.join(ckpt.STATE).uri
    saved = ckpt.load(ref)
    recipe = _recipe(saved, where=where)
    state = ckpt.load_teacher_backbone(ref, saved=saved)
    with torch.device("meta"):
        vit = build_backbone(recipe, drop_path_rate=0.0)
    try:
        vit.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ckpt.CheckpointError(
            f"checkpoint {where}: its teacher does not match the ViT its own config describes: {err}"
        ) from err
    spec = spec_of(vit)
    return TeacherBackbone(
        spec=spec,
        state={k: v.contiguous() for k, v in state.items() if k not in TRAINING_ONLY},
        preprocessing={"ct_air_hu": recipe.intensity.ct_air_hu, "image_size": recipe.crops.global_size},
        source={
            "checkpoint": redact(ref.location.uri),
            "step": int(saved["step"]),
            "network": "teacher",
            **run_provenance(saved["config"]),  # datasets (redacted), configured steps, config hash
        },
    )


def save_backbone(
    folder_uri: str,
    *,
    spec: BackboneSpec,
    state: dict[str, torch.Tensor],
    preprocessing: dict[str, Any],
    source: dict[str, Any],
) -> str:
    """Write native weights, then ``config.json`` (the commit point) in ``folder_uri``; returns the sha256."""
    from safetensors.torch import save as save_safetensors

    folder: Location = resolve(folder_uri)
    data = save_safetensors({k: v.contiguous() for k, v in state.items()}, metadata={"format": FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": spec.to_dict(),
        "preprocessing": preprocessing,
        "weights": {"file": WEIGHTS, "sha256": digest, "state_hash": state_hash(state)},
        "source": source,
    }
    write_bytes_atomic(folder.join(WEIGHTS), data)
    write_bytes_atomic(folder.join(CONFIG), json.dumps(config, indent=2).encode())
    return digest


def model_sources(*, exclude: Sequence[str] = _SHIPPED_EXCLUDE) -> dict[str, bytes]:
    """The model package's module files (name -> bytes), as this radforge runs them."""
    root = Path(models_package.__file__).parent
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.py")) if p.name not in exclude}


def write_native(folder: Location, b: TeacherBackbone) -> str:
    """The native format: the model package copied to ``radforge_vit/``, then weights and config."""
    for name, data in model_sources().items():
        write_bytes_atomic(folder.join(PACKAGE, name), data)
    return save_backbone(
        folder.uri, spec=b.spec, state=b.state, preprocessing=b.preprocessing, source=b.source
    )


_README = """# radforge backbone export

Teacher ViT of {checkpoint} (step {step}). Input: one-channel slices through radforge's preprocessing
(raw CT clipped at {ct_air_hu} HU, per-image z-score, resize to {image_size} px). Paths below are
relative to this folder.

"""
_README_FORMATS = {
    "native": """- native/: `import sys; sys.path.insert(0, "native"); from radforge_vit import load_backbone;
  model = load_backbone("native")` (torch, numpy, safetensors); with radforge installed
  `radforge.trainer.models.load_backbone("native")`; from a radforge clone
  `torch.hub.load(CLONE, "radforge_vit", source="local", weights="native")`.
""",
    "hf": """- hf/: `AutoModel.from_pretrained("hf")` and
  `AutoImageProcessor.from_pretrained("hf", trust_remote_code=True)` (the processor is radforge's
  preprocessing, shipped as image_processor.py + preprocessing.py).
""",
    "timm": """- timm/: `timm.create_model("local-dir:timm", pretrained=True)`.
""",
}


def write_export(b: TeacherBackbone, out: str, *, formats: Sequence[str] = FORMATS) -> ExportResult:
    """Write backbone ``b`` under ``out`` in each of ``formats`` (a subfolder each) plus a README."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {unknown or formats}; valid: {', '.join(FORMATS)}")
    root = resolve(out)
    digest = ""
    written: dict[str, str] = {}
    for fmt in FORMATS:
        if fmt not in formats:
            continue
        folder = root.join(fmt)
        if fmt == "native":
            digest = write_native(folder, b)
        elif fmt == "hf":
            sources = model_sources(exclude=())
            write_hf(folder, spec=b.spec, state=b.state, preprocessing=b.preprocessing, sources=sources)
        else:
            write_timm(folder, spec=b.spec, state=b.state, preprocessing=b.preprocessing)
        written[fmt] = folder.uri
    readme = _README.format(
        checkpoint=b.source.get("checkpoint"), step=b.source.get("step"), **b.preprocessing
    ) + "".join(_README_FORMATS[fmt] for fmt in written)
    write_bytes_atomic(root.join("README.md"), readme.encode())
    return ExportResult(folder=root.uri, step=int(b.source.get("step", 0)), sha256=digest, formats=written)


def export_backbone(checkpoint: str, out: str, *, formats: Sequence[str] = FORMATS) -> ExportResult:
    """Write ``checkpoint``'s teacher backbone to ``out`` in ``formats`` (default: native, hf and timm)."""
    b = teacher_backbone(checkpoint)
    result = write_export(b, out, formats=formats)
    logger.info("exported %s (step %d) -> %s (%s)", b.source["checkpoint"], result.step, out, formats)
    return result


def load_for_eval(path: str) -> FrozenBackbone:
    """A frozen backbone from an export folder or from a checkpoint (run output, step folder, state.pt)."""
    from radforge.trainer.models.backbone import load_backbone

    loc = resolve(path)
    if loc.is_local and not exists(loc.join(ckpt.STATE)):
        folder = native_folder(loc.path)
        if (folder / CONFIG).is_file():
            return load_backbone(folder)
    return teacher_backbone(path).frozen()
