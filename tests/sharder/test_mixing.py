"""Mixing datasets and parts with proportions through streaming's Streams."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from radforge.ingest.config import load_config
from radforge.ingest.pipeline import run_ingest
from radforge.sharder.catalog import load_catalog
from radforge.sharder.mixing import MixSpec, SourceSpec, build_streams
from radforge.sharder.stream_memory import release_stream
from radforge.storage import resolve
from tests.support import make_archive, read_all

CFG = {"shards": {"size_limit": 16384, "samples_per_task": 8}}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix")
    arch = make_archive(root / "hospital-m", n_ct=2, n_mr=2, seed=5)
    out = {}
    for modality in ("CT", "MR"):
        ds = root / f"ds-{modality.lower()}"
        summary = run_ingest(str(arch), str(ds), load_config(overrides={**CFG, "modalities": [modality]}))
        assert summary.by_reason.get("excluded_by_config") == 2
        out[modality] = ds
    return out


def _epoch_modalities(spec: MixSpec, tmp_path: Path, epoch_size: int | None) -> Counter[str]:
    from streaming import StreamingDataset

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ[k] = v
    ds = StreamingDataset(
        streams=build_streams(spec, cache_dir=str(tmp_path / "cache")),
        epoch_size=epoch_size,
        batch_size=1,
        shuffle=True,
        shuffle_seed=7,
    )
    try:
        return Counter(sample["meta"]["modality"] for sample in ds)
    finally:
        release_stream(ds)


def test_modality_datasets_mix_three_to_one(datasets: dict[str, Path], tmp_path: Path) -> None:
    assert {s["meta"]["modality"] for s in read_all(datasets["CT"]).values()} == {"CT"}
    spec = MixSpec(
        sources=[
            SourceSpec(uri=str(datasets["CT"]), proportion=0.75),
            SourceSpec(uri=str(datasets["MR"]), proportion=0.25),
        ]
    )
    counts = _epoch_modalities(spec, tmp_path, epoch_size=40)
    assert counts == Counter({"CT": 30, "MR": 10})


def test_a_single_part_is_a_source(datasets: dict[str, Path], tmp_path: Path) -> None:
    part = load_catalog(resolve(str(datasets["MR"]))).parts[0]["id"]
    spec = MixSpec(sources=[SourceSpec(uri=str(datasets["MR"]), part=part, choose=12)])
    assert _epoch_modalities(spec, tmp_path, epoch_size=None) == Counter({"MR": 12})
    with pytest.raises(ValueError, match="no committed part 'p-nope'"):
        build_streams(
            MixSpec(sources=[SourceSpec(uri=str(datasets["MR"]), part="p-nope")]), cache_dir=str(tmp_path)
        )


def test_invalid_mix_specs() -> None:
    with pytest.raises(ValidationError, match="at most one of proportion, repeat, choose"):
        SourceSpec(uri="x", proportion=0.5, repeat=2)
    with pytest.raises(ValidationError, match="every source gives a proportion or none"):
        MixSpec(sources=[SourceSpec(uri="a", proportion=0.5), SourceSpec(uri="b")])
