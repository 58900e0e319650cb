"""Yield: what radforge keeps of a vendor zoo archive, against dcm2niix on the same archive.

The archive is the sample archive (``radforge.synthetic.build_sample_archive``): every real series
the shipped packages hold (pydicom's and pydicom-data's test files: GE, Siemens, Philips, ...;
classic and enhanced multi-frame; every transfer syntax), nilearn/nibabel NIfTI, and the
synthetic export with the vendor cases (Siemens MOSAIC with and without a CSA header, a classic 4D
DWI, an enhanced multi-frame 4D fMRI, SWI magnitude + phase, a CT with a missing slice, a 2D
sagittal MR of 5 mm slices, a near-isotropic 3D CT) and its bad inputs.

* dcm2niix (the converter radiology teams use; PyPI ``dcm2niix``, the ``bench`` extra) converts the
  archive once; each NIfTI it writes is attributed to its SeriesInstanceUID (``-f %j``), its
  volumes and slices (along the third axis) counted.
* radforge ingests it once with the acquired plane only (``reformat.min_side`` out of reach: the
  comparison is of native slices) and no volume cap (dcm2niix keeps every volume); its plans,
  recomputed with the same salt, attribute each manifest record to its SeriesInstanceUID.

Per series UID both tools' volumes and slices are printed. Slice yield = radforge's native slices
(kept, plus those dropped as empty air, counted apart) over dcm2niix's, over the series dcm2niix
converts that radforge does not skip by a documented rule (listed); images a rule skips inside a
converted series (a localizer, SWI phase images) are taken off dcm2niix's count. ``mosaic_samples`` counts
samples whose image has a mosaic's size (must be 0). Both runs are timed in CPU seconds (dcm2niix's
process; radforge's driver and every Ray process it started) per native slice. Ends with one JSON
line ``{"bench": "yield", ...}``.

    .venv/bin/python -m bench.yield [--cpus 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

SALT = "bench-yield-salt-not-secret"
# reasons radforge skips or quarantines by a documented rule (docs/ingest.md), not a conversion miss
DOCUMENTED_RULES = frozenset(
    {
        "not_image", "localizer", "secondary_capture", "burned_in_annotation", "unsupported_modality",
        "non_magnitude_image", "mosaic_undecodable", "decode_failed", "unreadable", "no_pixel_data",
        "unsupported_transfer_syntax", "absurd_dimensions", "duplicate_positions", "inconsistent_geometry",
        "no_content",
    }
)  # fmt: skip


def dcm2niix_series(archive: Path, out: Path) -> tuple[dict[str, dict[str, int]], float, str]:
    """Run dcm2niix over the archive: series UID -> {"volumes", "slices"}, CPU seconds, version."""
    import nibabel as nib

    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    version = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [exe, "-z", "n", "-b", "n", "-f", "%j", "-o", str(out), str(archive)],
        capture_output=True,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found: dict[str, dict[str, int]] = defaultdict(lambda: {"volumes": 0, "slices": 0})
    for nii in sorted(out.glob("*.nii")):
        uid = re.match(r"[0-9.]+", nii.name)
        if uid is None:
            continue
        shape = nib.load(str(nii)).shape
        volumes = int(shape[3]) if len(shape) > 3 else 1
        found[uid.group(0).rstrip(".")]["volumes"] += volumes
        found[uid.group(0).rstrip(".")]["slices"] += (int(shape[2]) if len(shape) > 2 else 1) * volumes
    return dict(found), cpu, version


def radforge_series(archive: Path, dataset: Path, cpus: int) -> tuple[dict[str, dict[str, Any]], float, int]:
    """Ingest the archive: series UID -> counts and reasons, CPU seconds, samples that are mosaics."""
    from bench.ingest import _cpu_since, _tree_cpu_seconds
    from radforge.ingest.config import load_config
    from radforge.ingest.discover import list_objects, read_header
    from radforge.ingest.pipeline import run_ingest
    from radforge.ingest.series import group_key, plan_group
    from radforge.storage import resolve

    cfg = load_config(
        overrides={
            "reformat": {"min_side": 1 << 20},  # the acquired plane only: native slices
            "volumes": {"max_per_series": 100_000},  # every volume, as dcm2niix
            "ray": {"num_cpus": cpus},
            "deid": {"salt": SALT},
        }
    )
    before, t0 = _tree_cpu_seconds(), time.process_time()
    summary = run_ingest(str(archive), str(dataset), cfg)
    cpu = _cpu_since(before) + (time.process_time() - t0)
    assert summary.committed
    # the same pure planning, to attribute each (salted) record to its series UID
    root = resolve(str(archive))
    groups: dict[str, list[Any]] = defaultdict(list)
    for path, size in list_objects(root):
        header = read_header(root, path, size)
        groups[group_key(header)].append(header)
    uid_of: dict[str, str] = {}
    rules = cfg.plan_rules()
    for headers in groups.values():
        for plan in plan_group(headers, salt=SALT.encode(), already_ingested=frozenset(), rules=rules):
            uid_of[plan.series_key] = headers[0].series_uid or plan.series_key
    import pyarrow.parquet as pq

    per_uid: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"volumes": 0, "slices_kept": 0, "slices_air": 0, "reasons": Counter()}
    )
    for manifest in (dataset / "manifests").glob("*.parquet"):
        for record in pq.read_table(manifest).to_pylist():
            entry = per_uid[uid_of.get(record["series_key"], record["series_key"])]
            if record["status"] == "ingested":
                entry["volumes"] += 1
                entry["slices_kept"] += record["slices_kept"]
                entry["slices_air"] += record["slices_dropped"]
            else:
                entry["reasons"][record["reason"]] += 1
    return dict(per_uid), cpu, _mosaic_samples(archive, dataset)


def _mosaic_samples(archive: Path, dataset: Path) -> int:
    """Samples whose image has the size of one of the archive's MOSAIC images."""
    import pydicom
    from streaming import StreamingDataset

    shapes = set()
    for path in archive.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the zoo holds broken files on purpose
            continue
        if "MOSAIC" in [str(v).upper() for v in ds.get("ImageType", [])]:
            shapes.add((int(ds.Rows), int(ds.Columns)))
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    samples = StreamingDataset(local=str(dataset), shuffle=False, batch_size=1)
    return sum(1 for s in samples if tuple(s["image"].shape) in shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of radforge's Ray (dcm2niix uses one)")
    args = parser.parse_args()
    from radforge.synthetic import build_sample_archive

    work = Path(tempfile.mkdtemp(prefix="radforge-yield-"))
    try:
        archive = work / "zoo"
        spec = build_sample_archive(str(archive))
        d_series, d_cpu, version = dcm2niix_series(archive, work / "dcm2niix")
        r_series, r_cpu, mosaic_samples = radforge_series(archive, work / "dataset", args.cpus)
        uids = sorted({e.series_uid for e in spec.series if e.series_uid} | set(d_series))
        # images of a series that a documented rule skips (a localizer, SWI phase) are not compared
        ruled_slices: Counter[str] = Counter()
        for e in spec.series:
            if e.series_uid and e.reason in DOCUMENTED_RULES:
                ruled_slices[e.series_uid] += e.n_slices
        rows, compared, ruled_out = [], [], []
        for uid in uids:
            d = d_series.get(uid, {"volumes": 0, "slices": 0})
            r = r_series.get(uid, {"volumes": 0, "slices_kept": 0, "slices_air": 0, "reasons": Counter()})
            reasons = dict(r["reasons"])
            cases = sorted({e.case for e in spec.series if e.series_uid == uid})
            rows.append((cases, d, r, reasons))
            if d["slices"] and not r["volumes"] and set(reasons) <= DOCUMENTED_RULES and reasons:
                ruled_out.append((cases, reasons))
            elif d["slices"]:
                compared.append(({**d, "slices": max(0, d["slices"] - ruled_slices[uid])}, r))
        print(f"{'series (cases)':44} {'dcm2niix vol/sl':>16} {'radforge vol/kept+air':>22}  reasons")
        for cases, d, r, reasons in rows:
            name = ",".join(cases)[:44]
            ours = f"{r['volumes']}/{r['slices_kept']}+{r['slices_air']}"
            print(f"{name:44} {d['volumes']:>7}/{d['slices']:<8} {ours:>22}  {reasons or ''}")
        d_slices = sum(d["slices"] for d, _ in compared)
        r_native = sum(r["slices_kept"] + r["slices_air"] for _, r in compared)
        converted_by_dcm2niix = sum(1 for _, d, _, _ in rows if d["slices"])
        ok_radforge = sum(1 for _, _, r, _ in rows if r["volumes"])
        missed = [
            cases
            for cases, d, r, reasons in rows
            if d["slices"] and not r["volumes"] and not (reasons and set(reasons) <= DOCUMENTED_RULES)
        ]
        r_slices = sum(r["slices_kept"] + r["slices_air"] for _, _, r, _ in rows)
        result = {
            "bench": "yield",
            "series": len(rows),
            "radforge_series_ok": ok_radforge,
            "dcm2niix_series_ok": converted_by_dcm2niix,
            "slice_yield_vs_dcm2niix": round(r_native / d_slices, 4) if d_slices else None,
            "slices_dropped_as_air": sum(r["slices_air"] for _, r in compared),
            "mosaic_samples": mosaic_samples,
            "skipped_by_documented_rule": [{"cases": c, "reasons": r} for c, r in ruled_out],
            "dcm2niix_converted_radforge_missed": missed,
            "dcm2niix_version": version,
            "cpu_s_per_slice_radforge": round(r_cpu / max(r_slices, 1), 5),
            "cpu_s_per_slice_dcm2niix": round(d_cpu / max(sum(d["slices"] for _, d, _, _ in rows), 1), 5),
        }
        result["cpu_ratio_radforge_over_dcm2niix"] = round(
            result["cpu_s_per_slice_radforge"] / max(result["cpu_s_per_slice_dcm2niix"], 1e-9), 2
        )
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
