"""The /dev/shm janitor: streaming's stale segments are removed, segments a live process maps are kept."""

from __future__ import annotations

import mmap
from pathlib import Path

from radforge.trainer.shm import mapped_shared_memory, remove_stale_shared_memory, stale_shared_memory

SEGMENTS = ("000007_barrier", "000007_shard_states", "000009_resume")


def make_segments(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"x" * 64)


def test_stale_segment_names_are_removed_others_kept(tmp_path: Path) -> None:
    make_segments(tmp_path, *SEGMENTS, "not_streaming", "000007_barrier.lock", "7_barrier")
    assert [p.name for p in stale_shared_memory(tmp_path)] == list(SEGMENTS)
    assert remove_stale_shared_memory(tmp_path) == list(SEGMENTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000007_barrier.lock", "7_barrier", "not_streaming"]
    assert stale_shared_memory(tmp_path / "absent") == []


def test_a_segment_a_live_process_maps_is_spared(tmp_path: Path) -> None:
    """This process maps one segment for real (/proc/self/maps lists it); only the others go."""
    make_segments(tmp_path, *SEGMENTS)
    with open(tmp_path / "000009_resume", "r+b") as f, mmap.mmap(f.fileno(), 0):
        assert mapped_shared_memory(tmp_path) == {"000009_resume"}
        assert remove_stale_shared_memory(tmp_path) == ["000007_barrier", "000007_shard_states"]
    assert [p.name for p in tmp_path.iterdir()] == ["000009_resume"]
    assert remove_stale_shared_memory(tmp_path) == ["000009_resume"]  # unmapped now: stale


def test_mappings_of_the_same_names_in_another_folder_do_not_count(tmp_path: Path) -> None:
    """Segments of the same names mapped elsewhere (/dev/shm by another run on this node, here a
    sibling folder) do not keep this folder's segments alive."""
    elsewhere, here = tmp_path / "elsewhere", tmp_path / "here"
    elsewhere.mkdir()
    here.mkdir()
    make_segments(elsewhere, "000007_barrier")
    make_segments(here, "000007_barrier")
    with open(elsewhere / "000007_barrier", "r+b") as f, mmap.mmap(f.fileno(), 0):
        assert "000007_barrier" in mapped_shared_memory(elsewhere)
        assert remove_stale_shared_memory(here) == ["000007_barrier"]
