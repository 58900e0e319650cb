"""Ingest configuration: defaults, YAML, overrides and one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from radforge.config import ConfigError, parse_overrides
from radforge.ingest.config import IngestConfig, load_config


def test_defaults_work_and_hash_is_stable() -> None:
    cfg = load_config()
    assert cfg.planes == ["auto"] and cfg.windows.ct == ["raw"]
    assert cfg.content_hash() == IngestConfig().content_hash()


def test_yaml_and_overrides_layer(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("planes: [axial, coronal]\nwindows: {ct: [raw, lung]}\ncontent: {min_foreground: 0.1}\n")
    cfg = load_config(
        str(f), overrides=parse_overrides(["content.min_foreground=0.2", "shards.compression=null"])
    )
    assert cfg.planes == ["axial", "coronal"] and cfg.windows.ct == ["raw", "lung"]
    assert cfg.content.min_foreground == 0.2 and cfg.shards.compression is None
    assert cfg.content_hash() != IngestConfig().content_hash()


def test_ray_settings_do_not_change_the_hash() -> None:
    assert IngestConfig().content_hash() == load_config(overrides={"ray": {"num_cpus": 1}}).content_hash()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["planes=[axial, oblique]"], "planes.1"),
        (["windows.ct=[raw, lungs]"], "unknown CT window"),
        (["content.min_foreground=1.5"], "content.min_foreground"),
        (["shards.compression=lz77"], "valid codecs"),
        (["colour=red"], "colour"),
    ],
)
def test_invalid_config_names_the_field(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(overrides=parse_overrides(overrides))
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("planes: [axial\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))


def test_salt_is_required_and_never_dumped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADFORGE_SALT", raising=False)
    with pytest.raises(ConfigError, match="RADFORGE_SALT"):
        IngestConfig().deid.resolved_salt()
    cfg = load_config(overrides={"deid": {"salt": "a-very-secret-salt"}})
    assert cfg.deid.resolved_salt() == b"a-very-secret-salt"
    assert "a-very-secret-salt" not in cfg.model_dump_json()


@pytest.mark.parametrize("salt", ["        ", " a b c d e f g ", "\t\tsalty\n\n\n"])
def test_a_salt_of_mostly_whitespace_is_refused_by_the_cli_path_too(
    salt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``radforge ingest`` (no service in front) refuses fewer than 8 non-whitespace salt characters."""
    monkeypatch.delenv("RADFORGE_SALT", raising=False)
    cfg = load_config(overrides={"deid": {"salt": salt}})
    with pytest.raises(ConfigError, match="not whitespace"):
        cfg.deid.resolved_salt()
    monkeypatch.setenv("RADFORGE_SALT", salt)
    with pytest.raises(ConfigError, match="not whitespace"):
        IngestConfig().deid.resolved_salt()
