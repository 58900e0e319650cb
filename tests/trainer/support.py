"""A small ingested dataset and tiny run configs for the training-loop tests."""

from __future__ import annotations

from pathlib import Path

from radforge.ingest.config import load_config
from radforge.ingest.pipeline import run_ingest
from radforge.trainer.run_config import TrainConfig, load_train_config
from tests.support import make_archive

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
SHARDS = {"shards": {"size_limit": 16384}}


def ingest_tiny(root: Path, dataset_uri: str) -> str:
    """Ingest a 3-series phantom archive (14 samples of 48 x 48) into ``dataset_uri``."""
    arch = make_archive(root / "archive", n_ct=2, n_mr=1, size=48, n_slices=6)
    summary = run_ingest(str(arch), dataset_uri, load_config(overrides=SHARDS))
    assert summary.committed and summary.samples_written >= 12
    return dataset_uri


def tiny_run(dataset: str, output: str, tmp: Path, *overrides: str) -> TrainConfig:
    """The tiny CPU run on ``dataset``: batch 4 (3 batches per epoch), keys recorded per step."""
    return load_train_config(
        TINY,
        overrides=[
            f"data.mix.sources=[{{uri: '{dataset}'}}]",
            f"data.cache_dir={tmp / 'cache'}",
            f"output={output}",
            "batch.global_size=4",
            "metrics.sample_keys=true",
            *overrides,
        ],
    )
