"""Assembly of every DICOM series of the synthetic archive, slice by slice against the volume the
generator started from: plain 3D series in three orientations, Siemens mosaics (with and without a
CSA header), a classic 4D DWI, an enhanced multi-frame 4D fMRI and SWI magnitude images. Pure: the
planner and the assembler, no Ray."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from radforge.ingest.assemble import load_dicom_volume
from radforge.ingest.config import GeometryConfig
from radforge.ingest.discover import list_objects, read_header
from radforge.ingest.series import SeriesPlan, group_key, plan_group
from radforge.storage import resolve
from radforge.synthetic import ArchiveSpec, ExpectedSeries, build_synthetic_archive

SALT = b"assemble-salt"


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArchiveSpec, list[SeriesPlan]]:
    spec = build_synthetic_archive(str(tmp_path_factory.mktemp("assemble")), size=24, n_slices=6, seed=5)
    root = resolve(spec.root)
    groups = defaultdict(list)
    for path, size in list_objects(root):
        header = read_header(root, path, size)
        groups[group_key(header)].append(header)
    plans = [p for hs in groups.values() for p in plan_group(hs, salt=SALT, already_ingested=frozenset())]
    return spec, plans


def _plan_of(entry: ExpectedSeries, spec: ArchiveSpec, plans: list[SeriesPlan]) -> SeriesPlan:
    """The plan that ingests ``entry``'s volume (by its files; volumes of one object by frame order)."""
    if entry.files:
        files = set(entry.files)
        candidates = [p for p in plans if p.kind == "dicom" and {i.path for i in p.instances} <= files]
    else:  # a later volume of an enhanced 4D object: the object is the first volume's
        first = spec.case(entry.case.rsplit("_v", 1)[0] + "_v0")
        candidates = [p for p in plans if p.instances and p.instances[0].path == first.files[0]]
    candidates.sort(key=lambda p: (p.instances[0].frame_indices or [0])[0])
    if "_v" in entry.case and not entry.files:
        return candidates[int(entry.case.rsplit("_v", 1)[1])]
    assert len(candidates) == 1 or candidates[0].instances[0].frame_indices, entry.case
    return candidates[0]


def test_every_ingested_dicom_volume_equals_its_source_slice_by_slice(
    planned: tuple[ArchiveSpec, list[SeriesPlan]],
) -> None:
    spec, plans = planned
    root = Path(spec.root)
    checked = []
    for entry in spec.ingested():
        if entry.phantom is None or entry.transfer_syntax is None:
            continue  # NIfTI
        plan = _plan_of(entry, spec, plans)
        assert plan.status == "pending", (entry.case, plan.reason, plan.detail)
        vol = load_dicom_volume(plan, lambda p: (root / p).read_bytes(), geometry=GeometryConfig())
        want = entry.phantom.array
        assert vol.array.shape == want.shape, entry.case
        for k in range(want.shape[0]):
            got = vol.array[k].astype(np.float32)
            np.testing.assert_array_equal(got, want[k], err_msg=f"{entry.case} slice {k}")
        assert vol.spacing == pytest.approx(entry.phantom.spacing), entry.case
        checked.append(entry.case)
    assert {
        "mr_mosaic_csa_v1", "mr_mosaic_no_csa_v0", "mr_dwi_v0", "mr_dwi_v3", "mr_fmri_enhanced_v2",
        "mr_swi_magnitude", "ct_coronal", "mr_sagittal",
    } <= set(checked)  # fmt: skip


def test_4d_volumes_have_their_own_keys_and_counts(planned: tuple[ArchiveSpec, list[SeriesPlan]]) -> None:
    spec, plans = planned
    for prefix, n in (("mr_dwi_v", 4), ("mr_fmri_enhanced_v", 3), ("mr_mosaic_csa_v", 2)):
        entries = [e for e in spec.series if e.case.startswith(prefix)]
        volume_plans = [_plan_of(e, spec, plans) for e in entries]
        assert len({p.series_key for p in volume_plans}) == n == len(entries)
        assert {(p.volumes_found, p.volumes_kept) for p in volume_plans} == {(n, n)}
    fmri = [_plan_of(e, spec, plans) for e in spec.series if e.case.startswith("mr_fmri_enhanced_v")]
    assert sum(p.n_objects for p in fmri) == 1  # one object, counted once
    assert [p.instances[0].frame_indices for p in fmri] == [list(range(6 * t, 6 * t + 6)) for t in range(3)]


def test_volume_cap_keeps_the_first_and_spreads_the_rest(
    planned: tuple[ArchiveSpec, list[SeriesPlan]],
) -> None:
    from radforge.ingest.series import PlanRules

    spec, _ = planned
    root = resolve(spec.root)
    dwi = spec.case("mr_dwi_v0")
    files = [f for e in spec.series if e.series_uid == dwi.series_uid for f in e.files]
    headers = [read_header(root, f, (Path(spec.root) / f).stat().st_size) for f in files]
    plans = plan_group(headers, salt=SALT, already_ingested=frozenset(), rules=PlanRules(max_volumes=2))
    kept = [p for p in plans if p.status == "pending"]
    (left,) = [p for p in plans if p.status != "pending"]
    b0 = set(dwi.files)
    assert any({i.path for i in p.instances} == b0 for p in kept)  # the first volume (b0) always
    assert (left.reason, left.volumes_found, left.volumes_kept) == ("volume_not_kept", 4, 0)
    assert sum(p.n_objects for p in plans) == len(headers)
