"""Cache folders under shared /tmp: another local user must not be able to plant them.

The trainer's shard cache (``data.cache_dir``) and the built-in eval suite (``eval.cache_dir``)
default to fixed names under /tmp. A folder another user created first (or a symlink they left)
would let them feed planted shards or a planted suite to the run; radforge refuses it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from radforge.files import FileRefused, own_private_dir

OTHER_UID = 65534  # nobody


def test_a_new_cache_folder_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "nested"
    own_private_dir(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_an_own_folder_open_to_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    own_private_dir(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_folder_another_user_created_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.mkdir()
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(FileRefused, match="owned by uid 65534"):
        own_private_dir(path)


def test_a_symlink_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "cache").symlink_to(target)
    with pytest.raises(FileRefused, match="symbolic link"):
        own_private_dir(tmp_path / "cache")
