"""The ingest job as a Ray Data pipeline: list -> headers -> series -> volumes -> slices -> MDS.

Every stage is a Ray Data operation over plain rows, so the same job runs on a laptop and on a
cluster. Decisions live in pure modules (:mod:`radforge.ingest.series`, :mod:`radforge.ingest.volume`,
:mod:`radforge.ingest.content`, ...); this module only wires them together and accounts for every object.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from radforge.ingest.assemble import load_dicom_volume, load_nifti_volume
from radforge.ingest.config import IngestConfig
from radforge.ingest.discover import Header, list_entries, read_header
from radforge.ingest.errors import IngestError, Reason, SourceError, Status
from radforge.ingest.inventory import (
    GroupRecord,
    Reuse,
    group_pseudonym,
    group_record,
    kept_attrs,
    listing_fingerprint,
    load_inventory,
    next_inventory,
    plan_context,
    plan_reuse,
    save_inventory,
)
from radforge.ingest.operator_report import check_report_location, write_operator_report
from radforge.ingest.partition import (
    SLICE_PIXELS,
    decode_task_count,
    decode_task_groups,
    header_files_per_task,
    series_cost,
)
from radforge.ingest.series import PlanRules, SeriesPlan, group_key, plan_group
from radforge.ingest.slicer import SliceCounts, volume_samples
from radforge.runtime import cluster_cpus, ensure_ray, tune_data_executor, tune_worker_allocator
from radforge.sharder.catalog import MANIFESTS, DatasetError, load_catalog
from radforge.sharder.commit_log import SeriesClaimedError
from radforge.sharder.datasink import MDSDatasink, count_key, rows_block
from radforge.sharder.lease import ArchiveLease, PartLease
from radforge.sharder.marker import check_destination, mark_dataset
from radforge.sharder.mds import SampleEncoder
from radforge.sharder.schema import COLUMNS
from radforge.storage import Location, resolve

log = logging.getLogger(__name__)

REPLAN_ATTEMPTS = 8  # commits refused by concurrent claims before a run gives up (each re-plan shrinks it)


@dataclass
class IngestSummary:
    """What one ingest run did (PHI-free: counts and reasons only)."""

    dataset_uri: str
    archive_id: str
    part_id: str | None
    committed: bool
    objects: int
    series: int
    by_status: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)  # ingested series by kind (see series_kinds)
    samples_written: int = 0
    slices_dropped: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    headers_read: int = 0  # objects whose header this run read (see radforge.ingest.inventory)
    headers_reused: int = 0  # objects planned from the archive's inventory, header not read
    replans: int = 0  # commits refused because a concurrent run committed some of its series first

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def series_kinds(record: dict[str, Any]) -> list[str]:
    """What an ingested series record was beyond a plain 3D series (for the run summary)."""
    kinds = []
    if record.get("mosaic"):
        kinds.append("mosaic volume")
    if record.get("volumes_found", 1) > 1:
        kinds.append("volume of a 4D series")
    if "," in (record.get("planes") or ""):
        kinds.append("reformatted")
    if "uneven" in (record.get("plane_rule") or ""):
        kinds.append("uneven spacing")
    return kinds


# ---- stage functions (run in Ray tasks) ------------------------------------------------------
def _read_headers(batch: pd.DataFrame, *, root: Location) -> pd.DataFrame:
    tune_worker_allocator()
    headers = [read_header(root, str(p), int(s)) for p, s in zip(batch["path"], batch["size"], strict=True)]
    return pd.DataFrame(
        {"group": [group_key(h) for h in headers], "header": [json.dumps(h.to_row()) for h in headers]}
    )


def _plan(
    batch: pd.DataFrame,
    *,
    salt: bytes,
    already: frozenset[str],
    rules: PlanRules,
    record: frozenset[str] | None = None,
) -> pd.DataFrame:
    """Plan one group; with ``record`` (the optional attributes kept), also its inventory record."""
    headers = [Header.from_row(json.loads(t)) for t in batch["header"]]
    plans = plan_group(headers, salt=salt, already_ingested=already, rules=rules)
    frame = _plan_frame(plans, nbytes=sum(h.size for h in headers))
    if record is not None:
        rec = group_record(headers, plans, salt=salt, keep_attrs=record)
        frame["inventory"] = [rec.to_json() if rec is not None and i == 0 else "" for i in range(len(plans))]
    return frame


def _plan_frame(plans: list[SeriesPlan], *, nbytes: int) -> pd.DataFrame:
    """One row per plan; ``nbytes`` (the group's objects) stands in for the pixels of a NIfTI volume."""
    return pd.DataFrame(
        {
            "series_key": [p.series_key for p in plans],
            "pending": [p.status == "pending" for p in plans],
            "cost": [
                series_cost(
                    pending=p.status == "pending",
                    rows=p.rows,
                    cols=p.cols,
                    frames=sum(max(i.frames, 1) for i in p.instances),
                    nbytes=nbytes,
                )
                for p in plans
            ],
            "plan": [p.to_json() for p in plans],
            # source slices (frames) a pending plan decodes: the progress bar's slice total
            "slices": [
                sum(max(i.frames, 1) for i in p.instances) if p.status == "pending" else 0 for p in plans
            ],
        }
    )


def _series_row(plan: SeriesPlan, counts: SliceCounts, archive_id: str) -> dict[str, Any]:
    record = {
        "series_key": plan.series_key,
        "study_key": plan.study_key,
        "archive_id": archive_id,
        "kind": plan.kind,
        "modality": plan.modality,
        "status": plan.status,
        "reason": plan.reason,
        "detail": plan.detail,
        "n_objects": plan.n_objects,
        "samples_written": counts.written,
        "slices_kept": counts.kept_slices,
        "slices_dropped": counts.dropped_slices,
        "transfer_syntax": plan.transfer_syntax,
        "volumes_found": plan.volumes_found,
        "volumes_kept": plan.volumes_kept,
        "mosaic": plan.mosaic is not None,
        "planes": ",".join(counts.planes),
        "plane_rule": counts.plane_rule,
    }
    return {"record": "series", "key": "", "sample": b"", "count": "", "series": json.dumps(record)}


def _check_modality(modality: str, cfg: IngestConfig) -> None:
    if modality not in cfg.modalities:
        raise IngestError(
            Reason.EXCLUDED_BY_CONFIG, f"modality {modality} is not among this dataset's {cfg.modalities}"
        )


def process_series(
    plan: SeriesPlan, *, root: Location, cfg: IngestConfig, archive_id: str
) -> list[dict[str, Any]]:
    """Decode one planned series into sample rows plus its series record; never raises."""
    counts = SliceCounts()
    rows: list[dict[str, Any]] = []
    if plan.status == "pending":
        fs = root.fs

        def read(path: str) -> bytes:
            return bytes(fs.cat_file(root.join(path).path))

        try:
            if plan.kind == "nifti":
                vol, plan.modality = load_nifti_volume(plan.instances[0].path, read, geometry=cfg.geometry)
                _check_modality(plan.modality, cfg)
            else:
                _check_modality(plan.modality or "CT", cfg)  # known from the headers: skip before decoding
                vol = load_dicom_volume(plan, read, geometry=cfg.geometry)
            modality = plan.modality or "CT"
            windows = cfg.windows.ct if modality == "CT" else cfg.windows.mr
            base_meta = {
                "study_key": plan.study_key,
                "archive_id": archive_id,
                "source_format": "nifti" if plan.kind == "nifti" else "dicom",
                "slice_thickness": plan.slice_thickness,
                **{k: v for k, v in plan.attrs.items() if k not in ("sex", "age_bucket")},
            }
            if cfg.deid.keep_sex:
                base_meta["sex"] = plan.attrs.get("sex")
            if cfg.deid.keep_age_bucket:
                base_meta["age_bucket"] = plan.attrs.get("age_bucket")
            encoder = _encoder()
            for sample in volume_samples(
                vol,
                modality=modality,
                series_key=plan.series_key,
                planes=cfg.planes,
                reformat=cfg.reformat,
                windows=windows,
                content=cfg.content,
                base_meta=base_meta,
                counts=counts,
            ):
                rows.append(
                    {
                        "record": "sample",
                        "key": sample["key"],
                        "sample": encoder.encode_parts(sample),  # views; rows_block copies once
                        "count": count_key(sample["meta"]),
                        "series": "",
                    }
                )
            if counts.written == 0:
                plan.stop(
                    Reason.NO_CONTENT, f"all {counts.dropped_slices} slices below the foreground threshold"
                )
            else:
                plan.status = Status.INGESTED.value
        except IngestError as e:
            rows = []
            plan.stop(e.reason, e.detail)
        except MemoryError:
            rows = []
            plan.stop(Reason.ABSURD_DIMENSIONS, "series does not fit in memory")
        except Exception as e:  # one broken series must never stop the job
            rows = []
            log.warning("series %s failed unexpectedly: %s", plan.series_key, type(e).__name__)
            plan.stop(Reason.DECODE_FAILED, f"unexpected {type(e).__name__} while decoding")
    rows.append(_series_row(plan, counts, archive_id))
    return rows


def _process(batch: pd.DataFrame, *, root: Location, cfg: IngestConfig, archive_id: str) -> pa.Table:
    tune_worker_allocator()
    rows: list[dict[str, Any]] = []
    for text in batch["plan"]:
        rows.extend(process_series(SeriesPlan.from_json(text), root=root, cfg=cfg, archive_id=archive_id))
    return rows_block(rows)


@functools.cache
def _encoder() -> SampleEncoder:
    return SampleEncoder(COLUMNS)


# ---- driver ----------------------------------------------------------------------------------
def _recorded_series(root: Location, catalog: Any) -> dict[str, tuple[str, str | None]]:
    """Series key -> (status, reason) of every series recorded by committed parts."""
    import pyarrow.parquet as pq

    recorded: dict[str, tuple[str, str | None]] = {}
    for part in catalog.parts:
        loc = root.join(part["manifest"])
        with loc.fs.open(loc.path, "rb") as f:
            table = pq.read_table(f, columns=["series_key", "status", "reason"])
        for key, status, reason in zip(
            *(table.column(c).to_pylist() for c in ("series_key", "status", "reason")), strict=True
        ):
            if recorded.get(key, ("",))[0] != Status.INGESTED.value:
                recorded[key] = (status, reason)
    return recorded


def _check_writable(root: Location) -> None:
    probe = root.join(f"{MANIFESTS}/.write-probe")
    try:
        if root.is_local:
            import os

            os.makedirs(root.join(MANIFESTS).path, exist_ok=True)
        with probe.fs.open(probe.path, "wb") as f:
            f.write(b"ok")
        probe.fs.rm_file(probe.path)
    except Exception as e:
        raise SourceError(f"destination {root.uri} is not writable ({type(e).__name__}: {e})") from None


def default_archive_id(source: Location) -> str:
    """The last path component of the source (an archive/delivery name, e.g. 'hospital-a-2026-11')."""
    return source.path.rstrip("/").rsplit("/", 1)[-1] or "archive"


def part_id_for(archive_id: str, config_hash: str, pending: list[str]) -> str:
    """Deterministic part id: a re-run of the same work after a crash reuses (and cleans) its folder."""
    h = hashlib.sha256(f"{archive_id}\n{config_hash}\n".encode())
    for key in sorted(pending):
        h.update(key.encode())
    return f"p-{h.hexdigest()[:16]}"


def _plan_series(
    headers: Any,
    *,
    salt: bytes,
    already: frozenset[str],
    rules: PlanRules,
    distributed: bool,
    cpus: int,
    task_cost: int,
    with_plans: bool = False,
    reused: pd.DataFrame | None = None,
    record: frozenset[str] | None = None,
) -> tuple[pd.DataFrame, Any]:
    """Group headers into series plans: ``(series_key and pending of each, a dataset of task blocks)``.

    The dataset has one block per decoding task, of about ``task_cost`` pixels (see
    :func:`radforge.ingest.partition.decode_task_groups`). Big archives group with a Ray Data groupby;
    smaller ones on the driver, which streams the (small) header rows, holds one entry per object
    and hands the plans to Ray already cut into balanced tasks, heaviest first: no hash shuffle, no
    repartition, no extra Ray Data execution (each costs a tenth of a second or more). Both call
    the same pure :func:`radforge.ingest.series.plan_group`.

    ``headers`` is None when no header is read; ``reused`` holds the plans taken from the
    archive's inventory (:func:`_reused_frame`); with ``record``, the frame has an ``inventory``
    column (a group's record on its first row, see :func:`_plan`).
    """
    import ray

    extra = ["plan"] if with_plans else []
    extra += ["inventory"] if record is not None else []
    kwargs: dict[str, Any] = {"salt": salt, "already": already, "rules": rules, "record": record}
    if distributed:
        plans = headers.groupby("group").map_groups(_plan, fn_kwargs=kwargs, batch_format="pandas")
        if reused is not None and len(reused):
            # Arrow, as map_groups' own blocks: a repartition does not mix block types
            plans = plans.union(ray.data.from_arrow(pa.Table.from_pandas(reused, preserve_index=False)))
        plans = plans.materialize()
        keys = plans.select_columns(["series_key", "pending", "cost", "slices", *extra]).to_pandas()
        n_tasks = decode_task_count(int(keys["cost"].sum()), len(keys), cpus, target=task_cost)
        return keys, plans.repartition(max(1, n_tasks))
    groups: dict[str, list[str]] = {}
    for batch in headers.iter_batches(batch_format="pandas", batch_size=4096) if headers is not None else []:
        for group, text in zip(batch["group"], batch["header"], strict=True):
            groups.setdefault(group, []).append(text)
    frames = [_plan(pd.DataFrame({"header": texts}), **kwargs) for _, texts in sorted(groups.items())]
    frames += [reused] if reused is not None and len(reused) else []
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(
            {"series_key": [], "pending": [], "cost": [], "slices": [], "plan": [], "inventory": []}
        )
    )
    tasks = decode_task_groups(table["cost"].tolist(), cpus, target=task_cost)
    blocks = [table.iloc[idx].reset_index(drop=True) for idx in tasks] or [table]
    return table[["series_key", "pending", "slices", *extra]], ray.data.from_pandas(blocks)


def _reused_frame(reuse: Reuse, *, already: frozenset[str], record: bool) -> pd.DataFrame | None:
    """The plans of the groups taken from the inventory, as :func:`_plan` frames (no record: kept as is)."""
    frames = [_plan_frame(plans, nbytes=nbytes) for _, plans, nbytes in reuse.plans(already)]
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    if record:
        table["inventory"] = ""
    return table


def _header_rows(objects: list[tuple[str, int]], *, root: Location, cfg: IngestConfig, cpus: int) -> Any:
    """A Ray dataset of the headers of ``objects`` (columns ``group``, ``header``); None if there are none."""
    import ray

    if not objects:
        return None
    per_task = header_files_per_task(len(objects), cpus, cap=cfg.ray.header_files_per_task)
    items = ray.data.from_items(
        [{"path": p, "size": s} for p, s in objects],
        override_num_blocks=max(1, -(-len(objects) // per_task)),  # one task per block
    )
    return items.map_batches(
        _read_headers,  # type: ignore[arg-type]  # keyword arguments arrive through fn_kwargs
        fn_kwargs={"root": root},
        batch_size=cfg.ray.header_batch_size,
        batch_format="pandas",
    )


def _headers_to_read(reuse: Reuse, *, root: Location, cfg: IngestConfig, cpus: int, salt: bytes) -> Any:
    """Headers of the objects the inventory does not cover, and of reused groups that new objects joined.

    Which groups new objects join is known only once their headers are read: those groups'
    members are read too (:meth:`radforge.ingest.inventory.Reuse.release`).
    """
    headers = _header_rows(list(reuse.read), root=root, cfg=cfg, cpus=cpus)
    if headers is None or not reuse.groups:
        return headers
    headers = headers.materialize()  # iterated here and again when planning; unique() would shuffle
    groups = {g for batch in headers.iter_batches(batch_format="pandas") for g in batch["group"]}
    joined = reuse.release(group_pseudonym(salt, g) for g in groups)
    return headers.union(_header_rows(joined, root=root, cfg=cfg, cpus=cpus)) if joined else headers


def run_ingest(
    source_uri: str,
    dataset_uri: str,
    cfg: IngestConfig,
    *,
    sink_cls: type[MDSDatasink] = MDSDatasink,
    on_plan: Callable[[int, int], None] | None = None,
    operator_report: str | None = None,
) -> IngestSummary:
    """Run the ingest job; returns its summary. Raises SourceError/ConfigError when it cannot run.

    ``operator_report`` (a URI outside the dataset) receives the source objects of every series
    not ingested (:mod:`radforge.ingest.operator_report`: identifying paths, opt-in).

    ``sink_cls`` lets callers (tests injecting faults, alternative sinks) subclass the datasink;
    ``on_plan(series, slices)`` is told how many series were planned and how many source slices the
    pending ones hold, before any is decoded (progress).
    The destination must be new, empty or a radforge dataset (else ``NotADatasetError``). Runs of
    different archives write one dataset at once: the run holds its archive's lease from before it
    reads the catalog until after its commit (``DatasetBusyError`` if another run of the same
    archive holds it; see :mod:`radforge.sharder.lease`), and when a concurrent run committed some
    of its series first (:class:`SeriesClaimedError`), it plans again against the log and writes
    only the rest (``replans`` in the summary).
    """
    cfg.deid.resolved_salt()  # a run that cannot start must not create a dataset
    dst = resolve(dataset_uri)
    report = check_report_location(operator_report, dst) if operator_report else None
    check_destination(dst)  # someone else's data: refused before anything is written there
    archive_id = cfg.archive_id or default_archive_id(resolve(source_uri))
    with ArchiveLease(dst, archive_id) as lease:
        mark_dataset(dst)
        for replans in range(REPLAN_ATTEMPTS):
            try:
                summary = _run_ingest_leased(
                    source_uri, dst.uri, cfg, sink_cls=sink_cls, on_plan=on_plan, lease=lease, report=report
                )
                summary.replans = replans
                return summary
            except SeriesClaimedError as e:
                log.info("a concurrent run committed series of this one first; planning again: %s", e)
    raise DatasetError(
        f"{dst.uri}: concurrent runs committed series of archive {archive_id!r} first {REPLAN_ATTEMPTS} "
        "times in a row; nothing of it was committed: run it again"
    )


def _run_ingest_leased(
    source_uri: str,
    dataset_uri: str,
    cfg: IngestConfig,
    *,
    sink_cls: type[MDSDatasink],
    on_plan: Callable[[int, int], None] | None,
    lease: ArchiveLease,
    report: Location | None = None,
) -> IngestSummary:
    """One planned and written attempt, holding its archive's lease and, while it writes, its part's.

    The sink renews both just before committing.
    """
    t0 = time.perf_counter()
    salt = cfg.deid.resolved_salt()
    src, dst = resolve(source_uri), resolve(dataset_uri)
    archive_id = cfg.archive_id or default_archive_id(src)
    entries = list_entries(src)
    objects = [(p, s) for p, s, _ in entries]
    phases: dict[str, float] = {"list": time.perf_counter() - t0}
    catalog = load_catalog(dst)
    _check_writable(dst)
    recorded = _recorded_series(dst, catalog)
    already = frozenset(k for k, (status, _) in recorded.items() if status == Status.INGESTED.value)
    known = frozenset((k, s, r) for k, (s, r) in recorded.items())
    keep = kept_attrs(keep_sex=cfg.deid.keep_sex, keep_age_bucket=cfg.deid.keep_age_bucket)
    context = plan_context(salt, cfg.plan_rules(), keep)
    inventory = load_inventory(dst, src.uri)
    reuse = plan_reuse(inventory, entries, salt=salt, context=context, already=already)

    ensure_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus)
    tune_data_executor()
    cpus = cluster_cpus()
    t_plan = time.perf_counter()
    headers = _headers_to_read(reuse, root=src, cfg=cfg, cpus=cpus, salt=salt)
    keys, task_blocks = _plan_series(
        headers,
        salt=salt,
        already=already,
        rules=cfg.plan_rules(),
        with_plans=report is not None,
        distributed=headers is not None and len(reuse.read) >= cfg.ray.distributed_grouping_min_objects,
        cpus=cpus,
        task_cost=cfg.ray.slices_per_task * SLICE_PIXELS,
        reused=_reused_frame(reuse, already=already, record=True),
        record=keep,
    )
    pending = sorted(keys.loc[keys["pending"], "series_key"])
    if on_plan is not None:
        on_plan(len(keys), int(keys["slices"].sum()))
    part_id = part_id_for(archive_id, cfg.content_hash(), pending)
    part_lease = PartLease(dst, part_id)  # the part's liveness record, taken just before its first file
    sink = sink_cls(
        dst.uri,
        part_id=part_id,
        part_info={
            "archive_id": archive_id,
            "config_hash": cfg.content_hash(),
            "config": cfg.model_dump(mode="json", exclude={"ray": True, "deid": {"salt"}}),
        },
        compression=cfg.shards.compression,
        hashes=cfg.shards.hashes,
        size_limit=cfg.shards.size_limit,
        samples_per_task=cfg.shards.samples_per_task,
        known_records=known,
        leases=(lease, part_lease),  # renewed before the commit: it refuses if either was taken over
        base_seq=catalog.seq,  # the log entry planned against: concurrent claims after it refuse the commit
    )
    # One block (hence one decoding + writing task) per task group: blocks are what spread work
    # over the cluster; batch_size=1 has each call decode one series, and the fused write consumes
    # its samples as they come (a task never holds all its series' samples at once).
    samples = task_blocks.map_batches(
        _process,
        fn_kwargs={"root": src, "cfg": cfg, "archive_id": archive_id},
        batch_size=1,  # one series per call: a task holds one decoded series at a time
        batch_format="pandas",
    )
    phases["headers_and_plan"] = time.perf_counter() - t_plan
    t_write = time.perf_counter()
    with part_lease:  # held until after the commit: orphan cleanup of other runs spares the part
        samples.write_datasink(sink)
    phases["decode_and_write"] = time.perf_counter() - t_write
    result = sink.result or {}
    # Only now, after the datasink completed: a failed run leaves no inventory behind.
    fresh = [GroupRecord.from_json(text) for text in keys["inventory"] if text]
    fingerprint = listing_fingerprint(entries)
    if fresh or inventory is None or (inventory.fingerprint, inventory.context) != (fingerprint, context):
        inv = next_inventory(reuse, fresh, context=context, fingerprint=fingerprint)
        try:
            save_inventory(dst, src.uri, inv)
        except Exception as e:  # it only saves work: this run is done, the next one reads every header
            log.warning(
                "the archive's inventory was not written (%s); the next run reads all headers",
                type(e).__name__,
            )
    series = result.get("all_series", [])
    if report is not None:  # opt-in, outside the dataset: the only output that names objects
        sources = {
            plan.series_key: [i.path for i in plan.instances]
            for plan in map(SeriesPlan.from_json, keys["plan"])
        }
        write_operator_report(report, source_uri=source_uri, records=series, objects=sources)
    by_status = Counter(s["status"] for s in series)
    by_reason = Counter(s["reason"] for s in series if s["reason"])
    ingested = [s for s in series if s["status"] == Status.INGESTED.value]
    by_kind = Counter(kind for s in ingested for kind in series_kinds(s))
    return IngestSummary(
        dataset_uri=dst.uri,
        archive_id=archive_id,
        part_id=part_id if result.get("committed") else None,
        committed=bool(result.get("committed")),
        objects=len(objects),
        series=len(series),
        by_status=dict(by_status),
        by_reason=dict(by_reason),
        by_kind=dict(by_kind),
        samples_written=int(result.get("samples", 0)),
        slices_dropped=int(sum(s["slices_dropped"] for s in series)),
        bytes_written=int(result.get("bytes", 0)),
        seconds=round(time.perf_counter() - t0, 3),
        phase_seconds={k: round(v, 3) for k, v in phases.items()},
        headers_read=len(reuse.read),
        headers_reused=reuse.reused_objects,
    )


__all__ = ["IngestSummary", "process_series", "run_ingest"]
