"""A stock StreamingDataset's shared memory is given back by release_stream / release_when_collected."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from radforge.sharder.stream_memory import release_stream, release_when_collected, stream_shared_memory
from tests.sharder.table_support import make_dataset, part_id


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _stock(root: Path):  # noqa: ANN202 - streaming's class
    from streaming import StreamingDataset

    return StreamingDataset(local=str(root), shuffle=False, batch_size=1)


def test_release_closes_and_unlinks_every_segment(tmp_path: Path) -> None:
    make_dataset(str(tmp_path / "ds"), {part_id(1): 6}, compression=None)
    release_stream(_stock(tmp_path / "ds"))  # starts multiprocessing's resource tracker (one pipe, once)
    gc.collect()
    before = _open_fds()
    ds = _stock(tmp_path / "ds")
    assert [s["key"] for s in (ds[i] for i in range(6))] == [f"{part_id(1)}/{i:04d}" for i in range(6)]
    segments = stream_shared_memory(ds)
    names = [shm.created_shms[0].name for shm in segments if shm.created_shms]
    assert len(segments) == 6 and len(names) == 6  # locals, barrier, epoch, cache usage, states, times
    assert all(Path("/dev/shm", n.lstrip("/")).exists() for n in names)
    assert _open_fds() >= before + 6
    release_stream(ds)
    assert _open_fds() == before
    assert not any(Path("/dev/shm", n.lstrip("/")).exists() for n in names)
    release_stream(ds)  # twice is harmless
    # the freed prefix serves the next dataset on the same folder
    again = _stock(tmp_path / "ds")
    assert again[5]["key"] == f"{part_id(1)}/0005"
    release_stream(again)
    assert _open_fds() == before


def test_release_when_collected(tmp_path: Path) -> None:
    make_dataset(str(tmp_path / "ds"), {part_id(2): 4}, compression=None)
    release_stream(_stock(tmp_path / "ds"))  # starts multiprocessing's resource tracker (one pipe, once)
    gc.collect()
    before = _open_fds()
    for _ in range(4):
        ds = _stock(tmp_path / "ds")
        release_when_collected(ds)
        ds[3]
        del ds
        gc.collect()
        assert _open_fds() == before
