"""Settings refuse unsafe values; security decisions; process identity; the progress files."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from radforge.services.app.security import (
    UriError,
    check_uri,
    is_loopback,
    redact_below,
    token_matches,
    uri_allowed,
)
from radforge.services.app.settings import ServiceSettings, SettingsError, load_settings, resolve_secrets
from radforge.services.jobs.process_identity import is_running, parse_proc_stat, process_start_ticks
from radforge.services.jobs.progress import RateWindow, read_json, write_json_atomic

TOKEN = "a-token-of-sufficient-length"


def test_embedded_defaults_are_safe_and_work(tmp_path: Path) -> None:
    s = load_settings(overrides={"state_dir": str(tmp_path)}, environ={})
    assert s.host == "127.0.0.1" and s.embedded_ray and s.database == str(tmp_path / "radforge.db")
    secrets = resolve_secrets(s)  # no token configured on loopback: one is generated, private to the user
    token_file = tmp_path / "api-token"
    assert secrets.api_token == token_file.read_text().strip() and len(secrets.api_token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert resolve_secrets(s).api_token == secrets.api_token  # stable across restarts
    assert TOKEN not in secrets.token_source and secrets.api_token not in secrets.token_source


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"host": "0.0.0.0"}, "not loopback: set $RADFORGE_API_TOKEN"),
        (
            {"host": "10.1.2.3", "api_token": TOKEN},
            "allowed_sources: host 10.1.2.3 is not loopback; name the buckets",
        ),
        (
            {"host": "0.0.0.0", "api_token": TOKEN, "allowed_sources": ["s3://hospital-a/"]},
            "allowed_datasets: host 0.0.0.0 is not loopback",
        ),
        ({"api_token": "short"}, "at least 16 characters"),
        ({"database_url": "mysql://db/radforge"}, "scheme 'mysql' is not supported"),
        ({"database_url": "postgresql://rf:pw@db/radforge"}, "a password in the URL is not accepted"),
        ({"database_url": "postgresql://db/radforge?password=pw"}, "a password in the URL is not accepted"),
        (
            {
                "host": "0.0.0.0",
                "api_token": TOKEN,
                "allowed_sources": ["s3://a/"],
                "allowed_datasets": ["s3://b/"],
            },
            "allowed_configs: host 0.0.0.0 is not loopback",
        ),
        ({"port": 70000}, "port: Input should be less than or equal to 65535"),
        ({"max_running_jobs": 0}, "max_running_jobs"),
        ({"unknown_field": 1}, "unknown_field: Extra inputs are not permitted"),
    ],
)
def test_unsafe_or_invalid_settings_are_refused(overrides: dict, words: str) -> None:
    with pytest.raises(SettingsError, match=words.replace("$", r"\$").replace("(", r"\(")):
        load_settings(overrides=overrides, environ={})


def test_a_refused_token_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(overrides={"api_token": "shhh-secret"}, environ={})
    assert "shhh-secret" not in str(e.value)
    with pytest.raises(SettingsError) as e:
        load_settings(overrides={"database_url": "postgresql://rf:shhh-secret@db/rf"}, environ={})
    assert "shhh-secret" not in str(e.value)


def test_production_settings_with_named_buckets(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    s = load_settings(
        overrides={
            "host": "0.0.0.0",
            "api_token_file": str(secret),
            "allowed_sources": ["s3://hospital-a/incoming/"],
            "allowed_datasets": ["s3://radforge-datasets/"],
            "allowed_configs": ["file:///app/configs/", "s3://radforge-configs/"],
            "ray_address": "http://ray-head:8265",
            "jobs_uri": "s3://radforge-state/jobs",
            "database_url": "postgresql://radforge@postgres:5432/radforge",
        },
        environ={},
    )
    assert s.ray_job_submission and s.database == "postgresql://radforge@postgres:5432/radforge"
    assert s.jobs_location == "s3://radforge-state/jobs"
    assert resolve_secrets(s).api_token == TOKEN
    assert resolve_secrets(s).token_source == f"file {secret}"


def test_layers_yaml_then_environment_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 9000\nmax_running_jobs: 3\nstate_dir: /from/yaml\n")
    env = {"RADFORGE_API_TOKEN": TOKEN, "RADFORGE_STATE_DIR": "/from/env"}
    s = load_settings(str(cfg), overrides={"port": 9100, "host": None}, environ=env)
    assert (s.port, s.max_running_jobs, s.state_dir) == (9100, 3, Path("/from/env"))
    assert s.api_token is not None and s.api_token.get_secret_value() == TOKEN
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(str(tmp_path / "missing.yaml"), environ={})


def test_unreadable_or_short_token_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="api_token_file: cannot read"):
        resolve_secrets(ServiceSettings(api_token_file=tmp_path / "nope"))
    (tmp_path / "short").write_text("abc")
    with pytest.raises(SettingsError, match="at least 16"):
        resolve_secrets(ServiceSettings(api_token_file=tmp_path / "short"))


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_token_comparison() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN[:-1] + "x", TOKEN)
    assert not token_matches(None, TOKEN)
    assert not token_matches("", TOKEN)


def test_uris_with_credentials_or_dotdot_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UriError, match="credentials in URIs") as e:
        check_uri("s3://AKIAXXXX:secret@bucket/archive")
    assert "secret" not in str(e.value)
    with pytest.raises(UriError, match=r"'\.\.'"):
        check_uri("s3://bucket/allowed/../other")
    with pytest.raises(UriError, match=r"'\.\.'"):
        check_uri(f"{tmp_path}/../etc")
    assert check_uri(f"file://{tmp_path}/a/") == f"{tmp_path}/a"
    assert check_uri("s3://bucket/a/") == "s3://bucket/a"


def test_allowlist_matches_whole_path_segments(tmp_path: Path) -> None:
    allow = ["s3://hospital-a/incoming/", str(tmp_path / "archives")]
    assert uri_allowed("s3://hospital-a/incoming", allow)
    assert uri_allowed("s3://hospital-a/incoming/2026-11-27", allow)
    assert not uri_allowed("s3://hospital-a/incoming-other/x", allow)
    assert not uri_allowed("s3://hospital-b/incoming/x", allow)
    assert not uri_allowed("gs://hospital-a/incoming/x", allow)
    assert uri_allowed(f"file://{tmp_path}/archives/a", allow)
    assert not uri_allowed(f"{tmp_path}/archives2/a", allow)
    assert uri_allowed("/anything/local", ["file:///"]) and not uri_allowed("s3://b/x", ["file:///"])


def test_redact_below_archive_root() -> None:
    line = "error reading s3://hospital-a/in/2026/DOE^JOHN/IM0001.dcm (size 0); root s3://hospital-a/in/2026"
    out = redact_below(line, ["s3://hospital-a/in/2026"])
    assert "DOE" not in out and "IM0001" not in out
    assert out == "error reading s3://hospital-a/in/2026/… (size 0); root s3://hospital-a/in/2026"
    assert redact_below("open '/data/a/Smith/x.dcm' failed", ["/data/a"]) == "open '/data/a/…' failed"


def test_process_identity_and_zombies() -> None:
    # a command name with spaces and parentheses does not confuse the parser
    state, start = parse_proc_stat(
        "123 (a (b) c) S 1 123 123 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0"
    )
    assert (state, start) == ("S", 98765)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        start_ticks = process_start_ticks(proc.pid)
        assert start_ticks is not None and is_running(proc.pid, start_ticks)
        assert not is_running(proc.pid, start_ticks + 1)  # same PID, another process: not ours
        assert proc.stdin is not None
        proc.stdin.close()
        # ended but not yet reaped: a zombie has ended
        from tests.services.support import wait_until

        wait_until(lambda: not is_running(proc.pid, start_ticks), timeout=20, what="the process to end")
    finally:
        proc.wait(timeout=20)
    assert process_start_ticks(proc.pid) is None


def test_progress_files_are_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    assert read_json(path) is None
    write_json_atomic(path, {"samples_written": 5})
    write_json_atomic(path, {"samples_written": 9})
    assert read_json(path) == {"samples_written": 9}
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]  # no temporary left behind
    assert os.access(path, os.R_OK)


def test_rate_window() -> None:
    w = RateWindow(seconds=10)
    assert w.add(0, now=100.0) is None
    assert w.add(50, now=105.0) == pytest.approx(10.0)
    assert w.add(100, now=110.0) == pytest.approx(10.0)
    assert w.add(400, now=120.0) == pytest.approx(30.0)  # only the last 10 s count


def test_the_service_refuses_to_start_without_a_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from radforge.services.app.service import build_service

    monkeypatch.delenv("RADFORGE_SALT", raising=False)
    with pytest.raises(SettingsError, match=r"deid.salt: a salt of at least 8 characters that are not"):
        build_service(load_settings(overrides={"state_dir": str(tmp_path)}, environ={}))
    assert not (tmp_path / "radforge.db").exists()  # refused before anything was created
