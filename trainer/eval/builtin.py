"""The built-in task suite, generated offline: phantom CT/MR volumes and real MR volumes shipped in packages.

Built so a difference between two backbones can be told from noise: every label is visible in the
anatomy at the backbone's input size (32 px for the tiny CPU recipe), and test sets hold hundreds of
samples (a paired 95% interval of a few points). Phantoms (``radforge.synthetic.phantom``, 96 px at
the 128-px phantom's field of view, 2.5 mm slices) carry a label map, so labels come for free.

| task | track | kind | label (samples); clf: classification, reg: regression (R2) |
|---|---|---|---|
| organ_2d | 2d | clf | organ an axial phantom slice cuts, kidney > liver > lung > none (every body slice) |
| modality_2d | 2d | clf | CT or MR phantom slice (10 per plane, all three planes) |
| plane_2d | 2d | clf | axial, coronal or sagittal phantom slice (the same slices) |
| position_2d | 2d | reg | axial slice position along the body, 0 inferior .. 1 superior (every body slice) |
| lesion_2d | 2d | clf | a 40-px liver-centred crop shows a lesion (lesion phantoms, 1 mm slices) |
| region_3d | 3d | clf | organ a slab of 4 consecutive axial phantom slices cuts (their features averaged) |
| plane_real_2d | 2d | clf | plane of real brain MR: MNI152, nibabel's EPI and T1 (up to 100 per plane) |
| position_real_2d | 2d | reg | axial position in a real brain, 0 lowest .. 1 highest (every axial slice) |

Splits are by volume, never by slice: phantoms in groups of four (CT/MR x lesion or not) so every
split is balanced, 50% train, 20% val, 30% test. The real volumes are few, so they are assigned whole:
test is the MNI152 T1 template; train the MNI152 grey- and white-matter maps, nibabel's anatomical
T1 and the first time point of its example EPI; val the EPI's second time point. The MNI maps are
the same brain as the T1: their outline carries over, an easier transfer than to a new subject
(docs/eval.md says so). Suite version 2 kept the only other T1 (nibabel's, 33 x 41 x 25 voxels) for
val, so a probe learnt planes from tissue maps and EPI alone and was tested on a T1: a contrast
transfer that the linear probe lost in 12 of 14 GPU sweep runs whatever the backbone had learnt.

Lesions: whole 96-px slices resized to 32 px leave a lesion one or two pixels across, at chance for
every backbone (suite version 1 measured that), so the lesion tasks crop 40 px around the liver,
where a lesion is 6-13 px across at 32 px. The lesion phantoms have 1 mm slices, so a lesion spans
several slices.

The 3D track's task, region_3d, averages the features of 4 consecutive axial slices of an anatomy
phantom (a slab: one sample) and labels the slab by the organ it cuts (kidney > liver > lung > none),
so it has a test set of hundreds of slabs. Suite version 2 had lesion_3d instead (does the lesion
phantom have a lesion; one sample per volume): 28 test samples, intervals of +-0.25, noise in every
run of the GPU sweep (docs/BENCHMARKS.md), so it could not tell backbones apart.

Real volumes are read with nibabel from files inside the installed packages (the files nilearn's
``load_mni152_template`` and ``load_mni152_gm_template``/``..._wm_template`` read; nothing is
downloaded), reoriented to the phantoms' (z, y, x) LPS order. The real tasks are left out (with a log
line) where nilearn or nibabel's test data are absent.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radforge.trainer.eval.tasks import Kind, TaskSpec, write_parquet_task

logger = logging.getLogger(__name__)

SUITE_VERSION = 3
SUITE_FILE = "suite.json"
PLANES = ("axial", "coronal", "sagittal")
ORGANS = ("none", "lung", "liver", "kidney")
SPLIT_SHARES = (0.5, 0.2)  # train, val; test is the rest
# the lesion tasks at the default 96-px phantoms (both scale with the phantom's size):
LESION_CROP = 40  # px side of the liver-centred crop
LESION_MIN_PX = 16  # lesion pixels a crop must show to be a positive
LIVER_MIN_PX = 40  # liver pixels a slice must cut to be cropped (not scaled: a floor)
DEFAULT_SIZE = 96
PHANTOM_FOV_MM = 102.4  # the 128-px phantom at 0.8 mm
REAL_PER_PLANE = 100
SLAB = 4  # axial slices per region_3d sample
MNI_FILES = {  # nilearn/datasets/data: what load_mni152_template & co. read
    "mni152-t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "mni152-gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "mni152-wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
REAL_SPLITS = {"mni152-t1": "test", "nibabel-example4d-t1": "val"}  # every other real volume: train


@dataclass(frozen=True)
class _Volume:
    name: str
    modality: str
    array: np.ndarray  # (z, y, x) stored dtype: int16 HU (CT) or uint16 (MR)
    labels: np.ndarray
    split: str
    lesion_ml: float


@dataclass
class _Rows:
    """Samples of one task as they are collected: written by :meth:`write`."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    modality: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    windows: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # 3D: the sample (slab) each slice belongs to

    def add(
        self, image: np.ndarray, label: float, volume: _Volume, *, window: str = "raw", sample: str = ""
    ) -> None:
        self.windows.append(window)
        self.images.append(image)
        self.labels.append(label)
        self.splits.append(volume.split)
        self.modality.append(volume.modality)
        self.volumes.append(volume.name)
        self.samples.append(sample)

    def write(self, root: Path, spec: TaskSpec) -> Path:
        """The task folder; 3D tasks carry sample ids; every task its source volume as provenance."""
        return write_parquet_task(
            root / spec.name,
            spec,
            images=self.images,
            modality=self.modality,
            labels=self.labels,
            splits=self.splits,
            window=self.windows,
            volumes=self.samples if spec.track == "3d" else None,
            source_volumes=self.volumes,
        )


def _split_of(group: int, n_groups: int) -> str:
    """Groups of four volumes: the first 50% train, then 20% val, the rest test."""
    if group < round(SPLIT_SHARES[0] * n_groups):
        return "train"
    return "val" if group < round(sum(SPLIT_SHARES) * n_groups) else "test"


def _phantoms(
    n_volumes: int, *, size: int, slices: int, z_mm: float, seed: int, prefix: str
) -> Iterator[_Volume]:
    """Groups of (CT lesion, MR lesion, CT, MR) phantoms at the 128-px phantom's field of view."""
    from radforge.synthetic.phantom import ct_phantom, mr_phantom

    n_groups = max(n_volumes // 4, 3)
    rng = np.random.default_rng(seed)
    spacing = (z_mm, PHANTOM_FOV_MM / size, PHANTOM_FOV_MM / size)
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
            name = f"{prefix}{modality.lower()}-{g:03d}-{i}"
            yield _Volume(name, modality, array, ph.labels, _split_of(g, n_groups), ph.lesion_volume_ml)


def _organ(labels: np.ndarray) -> int:
    from radforge.synthetic.phantom import Label

    for organ, label in (("kidney", Label.KIDNEY), ("liver", Label.LIVER), ("lung", Label.LUNG)):
        if (labels == label).any():
            return ORGANS.index(organ)
    return 0


def _plane_slices(
    volume: np.ndarray, *, count: int, extent: tuple[np.ndarray, np.ndarray] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Up to ``count`` slices per plane, evenly spaced over the middle 80% of ``extent`` (default: all)."""
    lo, hi = extent if extent is not None else (np.zeros(3, int), np.array(volume.shape))
    for axis, plane in enumerate(PLANES):
        span = hi[axis] - lo[axis]
        first, last = lo[axis] + 0.1 * span, hi[axis] - 0.1 * span - 1
        for idx in np.unique(np.linspace(first, last, count).astype(int)):
            yield plane, np.take(volume, idx, axis=axis)


def _liver_crop(image: np.ndarray, labels2d: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, labels) of a ``side``-px square centred on a slice's liver (lesion included), or None."""
    from radforge.synthetic.phantom import Label

    liver = (labels2d == Label.LIVER) | (labels2d == Label.LESION)
    if liver.sum() < LIVER_MIN_PX:
        return None
    cy, cx = (int(round(c.mean())) for c in np.nonzero(liver))
    side = min(side, *image.shape)
    y0 = min(max(cy - side // 2, 0), image.shape[0] - side)
    x0 = min(max(cx - side // 2, 0), image.shape[1] - side)
    return image[y0 : y0 + side, x0 : x0 + side], labels2d[y0 : y0 + side, x0 : x0 + side]


def _soft_tissue(image: np.ndarray, modality: str) -> tuple[np.ndarray, str]:
    """A lesion crop as stored for the probe: CT in the abdomen window (uint8, ``preset``), MR raw.

    Raw CT is z-scored with bone and air in view, which squeezes the lesion's 55-75 HU of contrast
    to a shade; the abdomen window (what ingest stores beside raw) shows it as a radiologist sees it.
    """
    if modality != "CT":
        return image, "raw"
    from radforge.windowing import resolve_window, window_to_uint8

    return window_to_uint8(image.astype(np.float32), resolve_window("abdomen")), "preset"


def _lesion_rows(volumes: list[_Volume], *, size: int) -> _Rows:
    """Liver crops, lesion visible or not, balanced per group."""
    from radforge.synthetic.phantom import Label

    side = max(round(LESION_CROP * size / DEFAULT_SIZE), 8)
    min_px = max(round(LESION_MIN_PX * (size / DEFAULT_SIZE) ** 2), 2)

    slices2d = _Rows()
    positives = {"CT": 0, "MR": 0}  # of the group's lesion volume per modality (it comes first)
    for v in volumes:
        crops = [c for z in range(v.array.shape[0]) if (c := _liver_crop(v.array[z], v.labels[z], side))]
        stored = [_soft_tissue(image, v.modality) for image, _ in crops]
        if v.lesion_ml > 0:
            shown = [i for i, (_, labels) in enumerate(crops) if (labels == Label.LESION).sum() >= min_px]
            positives[v.modality] = len(shown)
        else:  # as many negatives as the group's lesion volume of this modality gave, evenly spread
            want = positives[v.modality] if crops else 0
            shown = np.unique(np.linspace(0, len(crops) - 1, want).astype(int)).tolist()
        for i in shown:
            slices2d.add(stored[i][0], int(v.lesion_ml > 0), v, window=stored[i][1])
    return slices2d


def _real_mr_volumes() -> list[tuple[str, np.ndarray]]:
    """Real brain MR volumes shipped in packages, (z, y, x) LPS like the phantoms, uint16 0..4000.

    Empty where nibabel is not installed; the MNI152 files where nilearn is (found without importing
    it: importing nilearn costs seconds, reading its files does not).
    """
    try:
        import nibabel as nib
        from nibabel.testing import data_path
    except ImportError:
        return []
    candidates = [("nibabel-anatomical", Path(str(data_path)) / "anatomical.nii")]
    candidates.append(("nibabel-example4d", Path(str(data_path)) / "example4d.nii.gz"))
    spec = importlib.util.find_spec("nilearn")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        candidates += [(name, Path(loc) / "datasets" / "data" / f) for name, f in MNI_FILES.items()]
    out = []
    for name, path in candidates:
        if not path.is_file():
            continue
        image: Any = nib.as_closest_canonical(nib.load(str(path)))  # RAS
        data = np.asarray(image.dataobj, dtype=np.float32)
        frames = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
        for t, frame in enumerate(frames):
            lps = frame[::-1, ::-1, :].transpose(2, 1, 0)  # RAS (x, y, z) -> LPS (z, y, x)
            scaled = np.clip(lps, 0, None) / max(float(lps.max()), 1.0) * 4000.0
            label = name if len(frames) == 1 else f"{name}-t{t}"
            out.append((label, np.ascontiguousarray(np.rint(scaled).astype(np.uint16))))
    return out


def _real_tasks(root: Path) -> list[Path]:
    """plane_real_2d and position_real_2d, or none (logged) when the real volumes are not installed."""
    real = _real_mr_volumes()
    if "mni152-t1" not in {name for name, _ in real}:
        logger.warning("plane_real_2d, position_real_2d left out: nilearn's MNI152 templates not installed")
        return []
    planes, position = _Rows(), _Rows()
    for name, array in real:
        v = _Volume(name, "MR", array, array, REAL_SPLITS.get(name, "train"), 0.0)
        inside = np.argwhere(array > 0.05 * array.max())  # the head's bounding box
        lo, hi = inside.min(0), inside.max(0) + 1
        for plane, image in _plane_slices(array, count=REAL_PER_PLANE, extent=(lo, hi)):
            planes.add(image, PLANES.index(plane), v)
        for z in range(lo[0], hi[0]):
            position.add(array[z], (z - lo[0]) / max(hi[0] - 1 - lo[0], 1), v)
    plane_desc, position_desc = "slice plane of real brain MR", "axial position in a real brain MR, 0 .. 1"
    return [
        planes.write(root, TaskSpec("plane_real_2d", "2d", "classification", PLANES, description=plane_desc)),
        position.write(root, TaskSpec("position_real_2d", "2d", "regression", description=position_desc)),
    ]


def build_builtin_suite(
    root: str | Path,
    *,
    n_volumes: int = 48,
    size: int = DEFAULT_SIZE,
    slices: int = 40,
    seed: int = 0,
    real: bool = True,
) -> list[Path]:
    """Write the built-in suite under ``root`` (reused when already there with the same parameters).

    ``n_volumes`` phantoms of ``slices`` x ``size`` x ``size`` (2.5 mm slices) for the anatomy tasks
    and twice as many at 1 mm slices (``slices`` x 1.6) for the lesion tasks (a lesion shows on a few
    slices, so it takes more volumes to reach a test set of hundreds). Deterministic: the same
    parameters give byte-identical task files.
    """
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
    organ, modality, plane, position, region = _Rows(), _Rows(), _Rows(), _Rows(), _Rows()
    for v in _phantoms(n_volumes, size=size, slices=slices, z_mm=2.5, seed=seed, prefix=""):
        body = np.flatnonzero(v.labels.reshape(len(v.labels), -1).any(1))  # the rest is air only
        for z in body:
            organ.add(v.array[z], _organ(v.labels[z]), v)
            position.add(v.array[z], (z - body[0]) / max(body[-1] - body[0], 1), v)
        for k in range(len(body) // SLAB):
            slab = body[k * SLAB : (k + 1) * SLAB]
            for z in slab:
                region.add(v.array[z], _organ(v.labels[slab]), v, sample=f"{v.name}/slab{k:02d}")
        for p, image in _plane_slices(v.array, count=10):
            modality.add(image, int(v.modality == "MR"), v)
            plane.add(image, PLANES.index(p), v)
    lesion_volumes = _phantoms(
        2 * n_volumes, size=size, slices=int(slices * 1.6), z_mm=1.0, seed=seed + 1, prefix="lesion-"
    )
    lesion2d = _lesion_rows(list(lesion_volumes), size=size)
    clf: Kind = "classification"
    reg: Kind = "regression"
    present = ("absent", "present")
    region_desc = "organ a slab of 4 axial phantom slices cuts"
    specs = [
        (organ, TaskSpec("organ_2d", "2d", clf, ORGANS, description="organ an axial phantom slice cuts")),
        (modality, TaskSpec("modality_2d", "2d", clf, ("CT", "MR"), description="CT or MR phantom slice")),
        (plane, TaskSpec("plane_2d", "2d", clf, PLANES, description="slice plane of a phantom")),
        (position, TaskSpec("position_2d", "2d", reg, description="axial position along the body, 0 .. 1")),
        (lesion2d, TaskSpec("lesion_2d", "2d", clf, present, description="a liver crop shows a lesion")),
        (region, TaskSpec("region_3d", "3d", clf, ORGANS, description=region_desc)),
    ]
    tasks = [rows.write(root, spec) for rows, spec in specs]
    if real:
        tasks += _real_tasks(root)
    marker.write_text(json.dumps({"params": params, "tasks": [t.name for t in tasks]}, indent=2))
    return tasks
