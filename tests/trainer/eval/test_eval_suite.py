"""Task folders (parquet, ingested MDS), features and their cache, periodic kNN, ``radforge eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from radforge.cli import main as cli_main
from radforge.ingest.config import load_config
from radforge.ingest.pipeline import run_ingest
from radforge.trainer.eval.builtin import build_builtin_suite
from radforge.trainer.eval.features import extract_features, mask_weights
from radforge.trainer.eval.periodic import PeriodicKnn
from radforge.trainer.eval.run import load_suite
from radforge.trainer.eval.tasks import TaskError, TaskSpec, load_task, read_mds, write_parquet_task
from radforge.trainer.export import random_backbone, save_backbone, vit_from_spec
from tests.support import make_archive

SMALL = {"n_volumes": 12, "size": 32, "slices": 12, "real": False}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_builtin_suite(tmp_path_factory.mktemp("suite"), **SMALL)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny backbone saved as an export (the format `radforge export` writes)."""
    from radforge.trainer.eval.backbone import BackboneSpec

    spec = BackboneSpec(
        img_size=32,
        patch_size=8,
        in_chans=1,
        embed_dim=48,
        depth=2,
        num_heads=3,
        ffn="mlp",
        ffn_hidden=96,
        qkv_bias=True,
        proj_bias=True,
        ffn_bias=True,
        num_registers=1,
        layerscale=True,
    )
    b = random_backbone(spec, seed=5)
    out = tmp_path_factory.mktemp("export") / "tiny"
    save_backbone(
        str(out), spec=spec, state=b.state_dict(), preprocessing=b.preprocessing, source={"seed": 5}
    )
    return out


def _source_volumes(folder: Path) -> np.ndarray:
    """The volume each row came from (the provenance column every built-in task carries)."""
    return np.asarray(pq.read_table(folder / "samples.parquet").column("source_volume").to_pylist())


def _assert_split_by_volume(folder: Path) -> None:
    task, sources = load_task(folder), _source_volumes(folder)
    assert len(sources) == len(task)
    for v in np.unique(sources):  # a volume never straddles splits
        assert len(set(task.splits[sources == v])) == 1, (folder.name, v)


def test_builtin_suite_is_balanced_split_by_volume_deterministic_and_reused(
    suite: list[Path], tmp_path: Path
) -> None:
    names = [p.name for p in suite]
    assert names == ["organ_2d", "modality_2d", "plane_2d", "position_2d", "lesion_2d", "region_3d"]
    for folder in suite:
        task = load_task(folder)
        assert set(task.splits) >= {"train", "test"}
        _assert_split_by_volume(folder)
        if task.spec.kind == "classification":
            counts = np.bincount(task.labels[task.splits == "train"], minlength=len(task.spec.classes))
            # the 12-slice phantoms here give 3 slabs each, none of them lung-free (default suite: below)
            assert (counts > 0).sum() >= (2 if folder.name == "region_3d" else len(counts)), (
                folder.name,
                counts,
            )
        else:
            assert task.labels.min() == 0.0 and task.labels.max() == 1.0  # position along the body
    for name in ("modality_2d", "plane_2d", "lesion_2d"):  # balanced classes
        labels = load_task(suite[names.index(name)]).labels
        counts = np.bincount(labels)
        assert counts.max() - counts.min() <= 0.15 * len(labels), (name, counts)
    region = load_task(suite[names.index("region_3d")])
    region_sources = _source_volumes(suite[names.index("region_3d")])
    organ = load_task(suite[0])
    organ_of = {  # each axial slice's organ_2d label, by source volume and pixels
        (src, im.tobytes()): int(label)
        for src, im, label in zip(_source_volumes(suite[0]), organ.images, organ.labels, strict=True)
    }
    assert region.volumes is not None
    for slab in np.unique(region.volumes):  # 4 axial slices of one phantom, labelled by their organs
        rows = np.flatnonzero(region.volumes == slab)
        assert len(rows) == 4 and len({region_sources[i] for i in rows}) == 1
        assert len(set(region.labels[rows])) == 1 and len(set(region.splits[rows])) == 1
        slices = [organ_of[(region_sources[i], region.images[i].tobytes())] for i in rows]
        assert region.labels[rows[0]] == max(slices)  # kidney > liver > lung > none
    assert len(set(region_sources)) == 12 and len(np.unique(region.labels)) >= 2
    mtime = (suite[0] / "samples.parquet").stat().st_mtime_ns
    assert build_builtin_suite(suite[0].parent, **SMALL) == suite
    assert (suite[0] / "samples.parquet").stat().st_mtime_ns == mtime
    again = build_builtin_suite(tmp_path / "again", **SMALL)  # the same parameters, the same bytes
    for a, b in zip(suite, again, strict=True):
        assert (a / "samples.parquet").read_bytes() == (b / "samples.parquet").read_bytes(), a.name
    other = build_builtin_suite(tmp_path / "other", **{**SMALL, "seed": 1})
    assert (other[0] / "samples.parquet").read_bytes() != (suite[0] / "samples.parquet").read_bytes()


def test_default_suite_has_hundreds_of_test_samples_and_real_volumes_split_whole(tmp_path: Path) -> None:
    """The default suite: every 2D task tests on hundreds of samples; the MNI152 T1 is the real test set."""
    suite = build_builtin_suite(tmp_path)
    assert [p.name for p in suite][-2:] == ["plane_real_2d", "position_real_2d"]
    for folder in suite:
        task = load_task(folder)
        _assert_split_by_volume(folder)
        n_test = int((task.splits == "test").sum())
        if task.spec.track == "2d":
            assert n_test >= 150, (folder.name, n_test)
        else:  # region_3d: slabs of 4 slices, every organ in every split
            assert task.volumes is not None
            assert len(np.unique(task.volumes[task.splits == "test"])) >= 120, folder.name
            for split in ("train", "val", "test"):
                assert set(task.labels[task.splits == split]) == {0, 1, 2, 3}, (folder.name, split)
        if folder.name.endswith("real_2d"):
            sources = _source_volumes(folder)
            assert set(sources[task.splits == "test"]) == {"mni152-t1"}
            assert set(sources[task.splits == "val"]) == {"nibabel-example4d-t1"}
            assert set(sources[task.splits == "train"]) == {  # a T1 among them: no contrast transfer
                "mni152-gm",
                "mni152-wm",
                "nibabel-anatomical",
                "nibabel-example4d-t0",
            }
    plane = load_task(suite[-2])
    assert np.bincount(plane.labels[plane.splits == "test"]).tolist() == [100, 100, 100]


def test_parquet_task_round_trip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(-1000, 1000, (16, 12)).astype(np.int16) for _ in range(4)]
    masks = [(rng.random((16, 12)) > 0.5).astype(np.uint8) for _ in range(4)]
    spec = TaskSpec("t", "2d", "classification", ("a", "b"), pooling="mask_mean")
    folder = write_parquet_task(
        tmp_path / "t",
        spec,
        images=images,
        modality=["CT"] * 4,
        labels=[0, 1, 0, 1],
        splits=["train", "train", "test", "test"],
        masks=masks,
    )
    task = load_task(folder)
    assert task.spec == spec and all(np.array_equal(a, b) for a, b in zip(task.images, images, strict=True))
    assert task.images[0].dtype == np.int16 and task.labels.tolist() == [0, 1, 0, 1] and len(task.masks) == 4

    obj = json.loads((folder / "task.json").read_text())
    (folder / "task.json").write_text(json.dumps({**obj, "track": "4d"}))
    with pytest.raises(TaskError, match=rf"{folder}/task.json: track='4d'; valid: 2d, 3d"):
        load_task(folder)
    (folder / "task.json").write_text(json.dumps({**obj, "track": "3d"}))
    with pytest.raises(TaskError, match="a 3d task needs a volume id per slice"):
        load_task(folder)
    (folder / "task.json").write_text(json.dumps(obj))
    table = pq.read_table(folder / "samples.parquet")
    pq.write_table(
        table.set_column(4, "split", pa.array(["train", "train", "tst", "test"])), folder / "samples.parquet"
    )
    with pytest.raises(TaskError, match=r"unknown split\(s\) \['tst'\]"):
        load_task(folder)
    with pytest.raises(TaskError, match="no tasks at"):
        load_suite(str(tmp_path / "missing"), builtin_root=tmp_path)


def test_mds_task_reads_an_ingested_dataset(ray_local: None, tmp_path: Path) -> None:
    """NIfTI/DICOM folders are evaluated by ingesting them, then labelling keys (2D) or series (3D)."""
    arch = make_archive(tmp_path / "archive", n_ct=2, n_mr=1, size=32, n_slices=6)
    dataset = tmp_path / "ds"
    assert run_ingest(str(arch), str(dataset), load_config()).committed
    stored = read_mds(dataset)
    keys = [s["key"] for s in stored]
    series = sorted({s["meta"]["series_key"] for s in stored})

    t2 = tmp_path / "t2"
    t2.mkdir()
    (t2 / "task.json").write_text(
        json.dumps(
            {
                "name": "m",
                "track": "2d",
                "kind": "classification",
                "classes": ["CT", "MR"],
                "source": "mds",
                "dataset": "../ds",
            }
        )
    )
    labels = [int(s["meta"]["modality"] == "MR") for s in stored]
    splits = ["train" if i % 2 else "test" for i in range(len(keys))]
    pq.write_table(pa.table({"key": keys, "label": labels, "split": splits}), t2 / "labels.parquet")
    task = load_task(t2)
    assert len(task) == len(keys) and sorted(task.labels.tolist()) == sorted(labels)

    t3 = tmp_path / "t3"
    t3.mkdir()
    (t3 / "task.json").write_text(
        json.dumps(
            {"name": "v", "track": "3d", "kind": "regression", "source": "mds", "dataset": str(dataset)}
        )
    )
    pq.write_table(
        pa.table({"series_key": series, "label": [1.0, 2.0, 3.0], "split": ["train", "train", "test"]}),
        t3 / "labels.parquet",
    )
    vol = load_task(t3)
    assert vol.volumes is not None and sorted(set(vol.volumes)) == series
    assert len(vol) == sum(s["meta"]["plane"] == "axial" and s["meta"]["window"] == "raw" for s in stored)
    pq.write_table(
        pa.table({"series_key": ["nope"], "label": [1.0], "split": ["train"]}), t3 / "labels.parquet"
    )
    with pytest.raises(TaskError, match="1 series_key\\(s\\) not in"):
        load_task(t3)


def test_features_equal_the_backbone_and_are_cached(suite: list[Path], export: Path, tmp_path: Path) -> None:
    from radforge.trainer.eval.backbone import load_backbone

    model = load_backbone(export)
    task = load_task(suite[0])
    feats = extract_features(model, task, batch_size=7, cache_dir=tmp_path)
    x = torch.stack([model.preprocess(task.images[i], modality=task.modality[i]) for i in range(3)])
    f = model(x)
    assert np.allclose(feats.cls[:3], f.cls.numpy(), atol=1e-5)
    assert np.allclose(feats.patch_mean[:3], f.patches.mean(1).numpy(), atol=1e-5)
    cached = list(tmp_path.glob("organ_2d-*.npz"))
    assert len(cached) == 1
    again = extract_features(model, task, cache_dir=tmp_path)
    assert np.array_equal(again.cls, feats.cls)  # read back from the cache
    other = random_backbone(model.spec, seed=6, preprocessing=model.preprocessing)
    extract_features(other, task, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("organ_2d-*.npz"))) == 2  # other weights, other cache entry


def test_mask_pooling_weights_patches_by_their_share_of_the_mask() -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[:8, :8] = 1  # the top-left patch of a 2x2 grid of 8-px patches
    mask[8:12, 8:16] = 1  # half of the bottom-right patch
    assert mask_weights(mask, size=16, patch=8).tolist() == [1.0, 0.0, 0.0, 0.5]


def test_periodic_knn_scores_the_training_vit_like_the_export(suite: list[Path], export: Path) -> None:
    from radforge.trainer.eval.backbone import load_backbone

    frozen = load_backbone(export)
    vit = vit_from_spec(frozen.spec)
    vit.load_state_dict(frozen.state_dict(), strict=False)  # the trainer ViT also has a mask token
    vit.train()
    periodic = PeriodicKnn.from_suite(
        str(suite[0].parent / "suite.json"),
        builtin_root=suite[0].parent,
        every=5,
        image_size=32,
        max_samples=64,
    )
    assert [periodic.due(s) for s in (4, 5, 10)] == [False, True, True]
    scores = periodic.evaluate(vit)
    assert vit.training  # mode restored
    assert set(scores) == {f"knn_{p.name}" for p in suite} | {"knn_mean"}
    assert scores == periodic.evaluate(frozen)
    assert all(0.0 <= v <= 1.0 for k, v in scores.items() if k not in ("knn_position_2d", "knn_mean"))


def test_eval_command_writes_a_report(
    suite: list[Path], export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    args = [
        "eval",
        "--backbone",
        f"tiny={export}",
        "--random-init",
        "--tasks",
        str(suite[2]),
        "--out",
        str(out),
        "--seeds",
        "2",
        "--max-shots",
        "2",
        "--bootstrap",
        "50",
    ]
    assert cli_main(args) == 0
    assert f"Report: {out / 'report.md'}" in capsys.readouterr().out
    written = json.loads((out / "results.json").read_text())
    results = written["results"]
    assert {(r["backbone"], r["shots"]) for r in results} == {
        (b, s) for b in ("tiny", "random_init") for s in (1, 2, "full")
    }
    paired = written["paired_differences"]
    assert [(p["task"], p["probe"], p["backbone"], p["baseline"]) for p in paired] == [
        ("plane_2d", probe, "tiny", "random_init") for probe in ("linear", "knn")
    ]
    full = {(r["probe"], r["backbone"]): r["metrics"]["accuracy"] for r in results if r["shots"] == "full"}
    for p in paired:  # the difference is that of the two backbones' scores on the same test samples
        assert p["diff"] == pytest.approx(full[p["probe"], "tiny"] - full[p["probe"], "random_init"])
        assert p["ci"][0] <= p["diff"] <= p["ci"][1] and p["verdict"] in ("win", "loss", "tie")
    markdown = (out / "report.md").read_text()
    assert "## Per-task deltas" in markdown and written["verdicts"][0] in markdown
    assert "Per-task deltas" in (out / "report.html").read_text()
    assert (out / "plots" / "plane_2d.png").stat().st_size > 1000
    assert cli_main(["eval", "--backbone", str(tmp_path), "--tasks", "builtin", "--out", str(out)]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
