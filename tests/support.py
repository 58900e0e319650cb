"""Helpers shared by tests: small archives from the project's generator, stock MDS reads."""

from __future__ import annotations

import os
from pathlib import Path


def make_archive(
    root: Path, *, n_ct: int = 2, n_mr: int = 1, size: int = 48, n_slices: int = 6, seed: int = 0
) -> Path:
    """A small archive of synthetic DICOM series (project generator), one folder per series."""
    from radforge.synthetic.dicom import write_dicom_series
    from radforge.synthetic.phantom import ct_phantom, mr_phantom

    for i in range(n_ct):
        ph = ct_phantom(shape=(n_slices, size, size), seed=seed * 100 + i)
        write_dicom_series(ph, root / f"ct{seed}-{i}", seed=seed * 100 + i)
    for i in range(n_mr):
        ph = mr_phantom(shape=(n_slices, size, size), seed=seed * 100 + 50 + i)
        write_dicom_series(ph, root / f"mr{seed}-{i}", seed=seed * 100 + 50 + i)
    return root


def read_all(local: str | Path, *, remote: str | None = None) -> dict[str, dict]:
    """Every sample of a dataset through a stock StreamingDataset, by key (no radforge code involved)."""
    from streaming import StreamingDataset

    from radforge.sharder.stream_memory import release_stream

    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0", "NODE_RANK": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ds = StreamingDataset(local=str(local), remote=remote, shuffle=False, batch_size=1)
        out: dict[str, dict] = {}
        try:
            for i in range(len(ds)):
                s = ds[i]
                assert s["key"] not in out, f"duplicate key {s['key']}"
                out[s["key"]] = s
        finally:
            release_stream(ds)  # streaming's atexit would keep its /dev/shm descriptors open
        return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
