"""torch.hub entry point: a radforge export's frozen ViT, loaded by this repository's model code.

    model = torch.hub.load("path/to/radforge", "radforge_vit", source="local", weights="OUT")
    f = model(model.preprocess(slice_hu, modality="CT")[None])   # f.cls (B, D), f.patches (B, N, D)

``weights`` is a ``radforge export`` folder (its root or ``native/``). The model package
(``trainer/models``, torch, numpy and safetensors only) is imported from its file path under a private
name, so a plain clone works without ``pip install``: torch.hub puts the repository root on
``sys.path``, where the ``radforge`` folder alone is not the installed namespace.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

dependencies = ["torch", "numpy", "safetensors"]

_MODELS = Path(__file__).resolve().parent / "trainer" / "models"
_NAME = "_radforge_hub_models"


def _models() -> ModuleType:
    """``trainer/models`` as a package named ``_radforge_hub_models`` (imported once)."""
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(
        _NAME, _MODELS / "__init__.py", submodule_search_locations=[str(_MODELS)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"no model package at {_MODELS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


def radforge_vit(weights: str, *, device: str = "cpu") -> Any:
    """The frozen backbone of the export at ``weights``: ``FrozenBackbone`` (eval mode, no gradients)."""
    return _models().load_backbone(weights, device=device)
