"""The built-in task suite, generated offline: phantom CT/MR volumes and real MR volumes shipped in packages.

Phantoms (``radforge.synthetic.phantom``) carry a label map, so slice- and volume-level labels come for
free. Volumes are split by volume (never by slice) into train / val / test, in groups of four
(CT with lesion, MR with lesion, CT without, MR without) so every split is balanced.

| task | track | kind | label |
|---|---|---|---|
| organ_2d | 2d | classification | organ an axial slice cuts (priority kidney > liver > lung > none) |
| lesion_2d | 2d | classification | an axial slice through the liver region shows the lesion or not |
| modality_2d | 2d | classification | CT or MR |
| plane_2d | 2d | classification | axial, coronal or sagittal slice of a phantom |
| plane_real_2d | 2d | classification | the same on real brain MR (nilearn's MNI152, nibabel's test volume) |
| lesion_3d | 3d | classification | the volume has a lesion |
| lesion_volume_3d | 3d | regression | lesion volume in ml (0 without a lesion) |

``plane_real_2d`` is left out (with a log line) where nibabel's test data or nilearn are absent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radforge.trainer.eval.tasks import TaskSpec, write_parquet_task

logger = logging.getLogger(__name__)

SUITE_VERSION = 1
SUITE_FILE = "suite.json"
PLANES = ("axial", "coronal", "sagittal")
ORGANS = ("none", "lung", "liver", "kidney")


@dataclass(frozen=True)
class _Volume:
    name: str
    modality: str
    array: np.ndarray  # (z, y, x) stored dtype: int16 HU (CT) or uint16 (MR)
    labels: np.ndarray
    split: str
    lesion_ml: float


def _split_of(group: int, n_groups: int) -> str:
    """Groups of four volumes: the first 60% train, then 20% val, the rest test."""
    if group < round(0.6 * n_groups):
        return "train"
    return "val" if group < round(0.8 * n_groups) else "test"


def _phantoms(n_volumes: int, *, size: int, slices: int, seed: int) -> Iterator[_Volume]:
    from radforge.synthetic.phantom import ct_phantom, mr_phantom

    n_groups = max(n_volumes // 4, 3)
    rng = np.random.default_rng(seed)
    spacing = (2.5, 0.8 * 128 / size, 0.8 * 128 / size)  # same field of view as the 128-px default
    for g in range(n_groups):
        for i, (modality, lesion) in enumerate([("CT", True), ("MR", True), ("CT", False), ("MR", False)]):
            make = ct_phantom if modality == "CT" else mr_phantom
            offset = tuple(rng.uniform(-0.06, 0.06, 2))
            ph = make(
                shape=(slices, size, size),
                spacing=spacing,
                seed=seed * 10_000 + g * 4 + i,
                lesion=lesion,
                body_offset=offset,
            )
            array = ph.array.astype(np.int16 if modality == "CT" else np.uint16)
            yield _Volume(
                f"{modality.lower()}-{g:03d}-{i}",
                modality,
                array,
                ph.labels,
                _split_of(g, n_groups),
                ph.lesion_volume_ml,
            )


def _organ(labels2d: np.ndarray) -> int:
    from radforge.synthetic.phantom import Label

    for organ, label in (("kidney", Label.KIDNEY), ("liver", Label.LIVER), ("lung", Label.LUNG)):
        if (labels2d == label).any():
            return ORGANS.index(organ)
    return 0


def _plane_slices(volume: np.ndarray, *, count: int) -> Iterator[tuple[str, float, np.ndarray]]:
    """``count`` slices per plane from the middle 70% of each axis: (plane, position in [0, 1], slice)."""
    for axis, plane in enumerate(PLANES):
        n = volume.shape[axis]
        for idx in np.unique(np.linspace(0.15 * n, 0.85 * n - 1, count).astype(int)):
            yield plane, idx / n, np.take(volume, idx, axis=axis)


def _real_mr_volumes() -> list[tuple[str, np.ndarray]]:
    """Real brain MR volumes shipped in packages (x, y, z voxel order), uint16; empty if unavailable."""
    import importlib.util

    out = []
    try:
        import nibabel as nib
        from nibabel.testing import data_path

        candidates = [("nibabel-anatomical", Path(str(data_path)) / "anatomical.nii")]
        spec = importlib.util.find_spec("nilearn")
        for loc in list(spec.submodule_search_locations or []) if spec else []:
            mni = Path(loc) / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
            candidates.append(("nilearn-mni152", mni))
        for name, path in candidates:
            if path.is_file():
                image: Any = nib.load(str(path))
                data = np.asarray(image.dataobj, dtype=np.float32)
                if data.ndim == 3:
                    scaled = np.clip(data, 0, None) / max(float(data.max()), 1.0) * 4000.0
                    out.append((name, np.rint(scaled).astype(np.uint16)))
    except ImportError:
        return []
    return out


def _planes_task(root: Path, volumes: list[_Volume]) -> Path:
    images, labels, splits, mods = [], [], [], []
    for v in volumes:
        for plane, _, im in _plane_slices(v.array, count=4):
            images.append(im)
            labels.append(PLANES.index(plane))
            splits.append(v.split)
            mods.append(v.modality)
    spec = TaskSpec("plane_2d", "2d", "classification", PLANES, description="slice plane of a phantom")
    return write_parquet_task(
        root / spec.name, spec, images=images, modality=mods, labels=labels, splits=splits
    )


def _real_planes_task(root: Path) -> Path | None:
    real = _real_mr_volumes()
    if not real:
        logger.warning("plane_real_2d left out: nibabel test data / nilearn's MNI152 not installed")
        return None
    images, labels, splits = [], [], []
    # one volume cannot be split by volume: contiguous blocks of positions go to one split each
    for _, vol in real:
        for plane, pos, im in _plane_slices(vol, count=30):
            block = int(pos * 20) % 5
            images.append(im)
            labels.append(PLANES.index(plane))
            splits.append("val" if block == 3 else "test" if block == 4 else "train")
    spec = TaskSpec(
        "plane_real_2d", "2d", "classification", PLANES, description="slice plane of real brain MR"
    )
    return write_parquet_task(
        root / spec.name, spec, images=images, modality=["MR"] * len(images), labels=labels, splits=splits
    )


def build_builtin_suite(
    root: str | Path,
    *,
    n_volumes: int = 80,
    size: int = 64,
    slices: int = 24,
    seed: int = 0,
    real: bool = True,
) -> list[Path]:
    """Write the built-in suite under ``root`` (reused when already there with the same parameters)."""
    root = Path(root)
    params = {
        "version": SUITE_VERSION,
        "n_volumes": n_volumes,
        "size": size,
        "slices": slices,
        "seed": seed,
        "real": real,
    }
    marker = root / SUITE_FILE
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("params") == params:
            return [root / t for t in saved["tasks"]]
    volumes = list(_phantoms(n_volumes, size=size, slices=slices, seed=seed))
    body = range(2, slices - 2)  # the phantom's first and last two slices are air only
    organ: dict[str, list] = {"images": [], "labels": [], "splits": [], "modality": []}
    lesion: dict[str, list] = {"images": [], "labels": [], "splits": [], "modality": []}
    modality: dict[str, list] = {"images": [], "labels": [], "splits": [], "modality": []}
    vol3d: dict[str, list] = {"images": [], "splits": [], "modality": [], "volumes": [], "ml": [], "has": []}
    from radforge.synthetic.phantom import Label

    for v in volumes:
        liver_z = [
            z for z in body if (v.labels[z] == Label.LIVER).any() or (v.labels[z] == Label.LESION).any()
        ]
        for z in body:
            im = v.array[z]
            if z % 2 == 0:
                for d, label in ((organ, _organ(v.labels[z])), (modality, int(v.modality == "MR"))):
                    d["images"].append(im)
                    d["labels"].append(label)
                    d["splits"].append(v.split)
                    d["modality"].append(v.modality)
            has = int((v.labels[z] == Label.LESION).sum() >= 4)
            # positives: slices through the lesion; negatives: liver slices of lesion-free volumes
            if (has and v.lesion_ml > 0) or (z in liver_z and v.lesion_ml == 0 and z % 2 == 0):
                lesion["images"].append(im)
                lesion["labels"].append(has)
                lesion["splits"].append(v.split)
                lesion["modality"].append(v.modality)
            vol3d["images"].append(im)
            vol3d["splits"].append(v.split)
            vol3d["modality"].append(v.modality)
            vol3d["volumes"].append(v.name)
            vol3d["ml"].append(v.lesion_ml)
            vol3d["has"].append(int(v.lesion_ml > 0))
    def task(spec: TaskSpec, rows: dict[str, list], labels: str = "labels") -> Path:
        """One task folder from the rows collected above (3D rows carry their volume names)."""
        return write_parquet_task(
            root / spec.name,
            spec,
            images=rows["images"],
            modality=rows["modality"],
            labels=rows[labels],
            splits=rows["splits"],
            volumes=rows.get("volumes"),
        )

    organ_desc = "organ an axial phantom slice cuts (kidney > liver > lung > none)"
    tasks = [
        task(TaskSpec("organ_2d", "2d", "classification", ORGANS, description=organ_desc), organ),
        task(
            TaskSpec(
                "lesion_2d",
                "2d",
                "classification",
                ("absent", "present"),
                description="axial phantom slice through the liver region shows a lesion",
            ),
            lesion,
        ),
        task(
            TaskSpec(
                "modality_2d",
                "2d",
                "classification",
                ("CT", "MR"),
                description="CT or MR axial phantom slice",
            ),
            modality,
        ),
        _planes_task(root, volumes),
        task(
            TaskSpec(
                "lesion_3d",
                "3d",
                "classification",
                ("absent", "present"),
                description="the phantom volume has a lesion (slice features averaged)",
            ),
            vol3d,
            labels="has",
        ),
        task(
            TaskSpec(
                "lesion_volume_3d",
                "3d",
                "regression",
                description="lesion volume in ml, 0 without a lesion (slice features averaged)",
            ),
            vol3d,
            labels="ml",
        ),
    ]
    if real and (real_task := _real_planes_task(root)) is not None:
        tasks.append(real_task)
    marker.write_text(json.dumps({"params": params, "tasks": [t.name for t in tasks]}, indent=2))
    return tasks
