"""Grouping and planning of series: pure decisions over headers."""

from __future__ import annotations

import random

from radforge.ingest.discover import Header
from radforge.ingest.errors import Reason
from radforge.ingest.series import group_key, plan_group, skip_reason

SALT = b"unit-test-salt"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def _h(i: int, *, series: str = "1.2.3.4", z: float | None = None, **kw: object) -> Header:
    base = dict(
        path=f"f{i:04d}",
        size=1000,
        kind="dicom",
        sop_class=CT,
        sop_instance=f"{series}.{i}",
        study_uid="1.2.3",
        series_uid=series,
        modality="CT",
        image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
        rows=64,
        cols=64,
        iop=AXIAL,
        ipp=[0.0, 0.0, float(i if z is None else z)],
        pixel_spacing=[1.0, 1.0],
    )
    base.update(kw)
    return Header(**base)  # type: ignore[arg-type]


def _plan(headers: list[Header], already: frozenset[str] = frozenset()) -> list:
    return plan_group(headers, salt=SALT, already_ingested=already)


def test_one_series_one_plan_with_every_instance() -> None:
    headers = [_h(i) for i in range(10)]
    random.Random(0).shuffle(headers)
    (plan,) = _plan(headers)
    assert plan.status == "pending" and plan.n_objects == 10
    assert sorted(i.path for i in plan.instances) == [f"f{i:04d}" for i in range(10)]


def test_series_key_is_salted_stable_and_reveals_no_uid() -> None:
    headers = [_h(i) for i in range(3)]
    (a,) = _plan(headers)
    (b,) = _plan(list(reversed(headers)))
    (c,) = plan_group(headers, salt=b"another-salt", already_ingested=frozenset())
    assert a.series_key == b.series_key != c.series_key
    assert "1.2.3" not in a.to_json().replace(a.series_key, "").split('"instances"')[0]


def test_two_series_in_one_folder_are_separate_groups() -> None:
    headers = [_h(i, series="1.2.3.4") for i in range(4)] + [_h(i, series="1.2.3.5") for i in range(4, 9)]
    groups: dict[str, list[Header]] = {}
    for h in headers:
        groups.setdefault(group_key(h), []).append(h)
    sizes = sorted(len(_plan(g)[0].instances) for g in groups.values())
    assert sizes == [4, 5]


def test_localizer_in_series_is_split_off_and_skipped() -> None:
    headers = [_h(i) for i in range(6)]
    headers.append(_h(99, iop=CORONAL, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"], ipp=[0, 0, 0]))
    plans = _plan(headers)
    assert len(plans) == 2
    by_status = {p.status: p for p in plans}
    assert by_status["pending"].n_objects == 6
    assert by_status["skipped"].reason == Reason.LOCALIZER.value
    assert by_status["skipped"].series_key != by_status["pending"].series_key


def test_mixed_orientation_size_echo_split() -> None:
    headers = [_h(i) for i in range(4)]
    headers += [_h(10 + i, iop=CORONAL) for i in range(3)]
    headers += [_h(20 + i, rows=128, cols=128) for i in range(2)]
    headers += [_h(30 + i, echo="2") for i in range(5)]
    sizes = sorted(len(p.instances) for p in _plan(headers))
    assert sizes == [2, 3, 4, 5]


def test_acquisitions_revisiting_positions_are_split_but_stepwise_acquisitions_are_not() -> None:
    two_passes = [_h(i, z=i, acquisition="1") for i in range(4)] + [
        _h(10 + i, z=i, acquisition="2") for i in range(4)
    ]
    assert sorted(len(p.instances) for p in _plan(two_passes)) == [4, 4]
    # Sequential (step-and-shoot) CT numbers each slice's acquisition: still one volume.
    stepwise = [_h(i, acquisition=str(i)) for i in range(6)]
    assert [len(p.instances) for p in _plan(stepwise)] == [6]


def test_copied_sop_instance_used_once_but_counted_as_object() -> None:
    headers = [_h(i) for i in range(5)]
    copy = _h(2)
    copy.path = "copy of f0002"
    (plan,) = _plan([*headers, copy])
    assert len(plan.instances) == 5 and plan.n_objects == 6


def test_skip_rules() -> None:
    assert skip_reason(_h(0)) is None
    assert skip_reason(_h(0, sop_class="1.2.840.10008.5.1.4.1.1.88.22", rows=None)) is Reason.NOT_IMAGE
    assert skip_reason(_h(0, sop_class="1.2.840.10008.5.1.4.1.1.481.5")) is Reason.NOT_IMAGE
    assert skip_reason(_h(0, sop_class="1.2.840.10008.5.1.4.1.1.7")) is Reason.SECONDARY_CAPTURE
    assert (
        skip_reason(_h(0, sop_class="1.2.840.10008.5.1.4.1.1.1", modality="CR"))
        is Reason.UNSUPPORTED_MODALITY
    )
    assert skip_reason(_h(0, sop_class=MR, modality="MR")) is None
    assert skip_reason(_h(0, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])) is Reason.LOCALIZER
    # UID families match whole components: SEG (...1.66.4) is not US (...1.6).
    assert skip_reason(_h(0, sop_class="1.2.840.10008.5.1.4.1.1.66.4", modality="SEG")) is Reason.NOT_IMAGE
    assert (
        skip_reason(_h(0, sop_class="1.2.840.10008.5.1.4.1.1.6.1", modality="US"))
        is Reason.UNSUPPORTED_MODALITY
    )


def test_burned_in_annotation_skips_the_series() -> None:
    headers = [_h(i) for i in range(3)]
    headers[1].burned_in = True
    (plan,) = _plan(headers)
    assert (plan.status, plan.reason) == ("skipped", Reason.BURNED_IN_ANNOTATION.value)


def test_already_ingested_series_is_not_planned_again() -> None:
    headers = [_h(i) for i in range(3)]
    (first,) = _plan(headers)
    (again,) = _plan(headers, already=frozenset({first.series_key}))
    assert (again.status, again.reason) == ("skipped", Reason.ALREADY_INGESTED.value)


def test_unreadable_object_is_its_own_quarantined_entry() -> None:
    bad = Header(path="junk.dcm", size=0, kind="unreadable", reason="unreadable", detail="zero-byte object")
    (plan,) = _plan([bad])
    assert (plan.kind, plan.status, plan.reason, plan.n_objects) == ("object", "quarantined", "unreadable", 1)
