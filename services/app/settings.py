"""Service settings: typed, layered, resolved once at start, refused when unsafe.

Layers: defaults <- YAML file <- ``RADFORGE_*`` environment <- command line.

Embedded defaults (loopback host, local Ray, SQLite in the state folder, local paths allowed) run
out of the box. Anything listening beyond loopback must name its token and its buckets: the
service refuses to start otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from radforge.config import ConfigError, load_model
from radforge.files import FileRefused, read_bounded_text
from radforge.services.app.security import (
    TOKEN_MIN_LENGTH,
    credentials_in_address,
    generated_token,
    is_loopback,
)

ANY_LOCAL_PATH = "file:///"
TOKEN_FILE_MAX_BYTES = 4096
DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
# Environment variables read by load_settings (secrets belong here or in a file, not in YAML).
ENV_FIELDS = {
    "RADFORGE_API_TOKEN": "api_token",
    "RADFORGE_API_TOKEN_FILE": "api_token_file",
    "RADFORGE_DATABASE_URL": "database_url",
    "RADFORGE_RAY_ADDRESS": "ray_address",
    "RADFORGE_STATE_DIR": "state_dir",
}


class SettingsError(ConfigError):
    """Settings the service refuses; one line naming the field and what would be valid."""


class ServiceSettings(BaseModel):
    """Everything ``radforge serve`` needs. See docs/control-plane.md for each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on; beyond loopback a token is required")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    state_dir: Path = Field(Path(".radforge"), description="database, job folders, embedded Ray info")
    database_url: str | None = Field(
        None,
        description="sqlite:///PATH (default: STATE_DIR/radforge.db) or postgresql://USER@HOST:PORT/DB "
        "(password from $PGPASSWORD or a passfile, not the URL)",
    )
    ray_address: str | None = Field(
        None,
        description="HOST:PORT of a Ray cluster's GCS (drivers run here), or http(s)://HEAD:8265 of its "
        "dashboard (jobs go through Ray's Job Submission API); default: embedded local Ray",
    )
    jobs_uri: str | None = Field(
        None,
        description="job folders (spec, progress, result); default STATE_DIR/jobs. With the Job "
        "Submission API, a URI both the service and the cluster reach (s3://..., or a shared path)",
    )
    ray_job_python: str = Field(
        "python", min_length=1, description="interpreter of Job Submission entrypoints on the cluster"
    )
    embedded_ray_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (default: all)")
    api_token: SecretStr | None = Field(None, description="bearer token (prefer $RADFORGE_API_TOKEN)")
    api_token_file: Path | None = Field(None, description="file holding the bearer token (a mounted secret)")
    allowed_sources: list[str] = Field(
        default_factory=lambda: [ANY_LOCAL_PATH], description="URI prefixes archives may be read from"
    )
    allowed_datasets: list[str] = Field(
        default_factory=lambda: [ANY_LOCAL_PATH],
        description="URI prefixes datasets and training outputs may be written to (and read from)",
    )
    allowed_configs: list[str] = Field(
        default_factory=lambda: [ANY_LOCAL_PATH], description="URI prefixes run configs may be read from"
    )
    max_running_jobs: int = Field(2, ge=1, le=10_000, description="jobs running at once, all kinds")
    max_running_by_kind: dict[str, int] = Field(default_factory=dict, description="per-kind limits")
    runner_tick_seconds: float = Field(0.5, gt=0, le=60, description="how often running jobs are checked")
    scheduler_tick_seconds: float = Field(1.0, gt=0, le=600, description="how often sources are checked")
    cancel_grace_seconds: float = Field(30.0, ge=0, description="SIGTERM to SIGKILL delay when cancelling")
    ray_job_resubmits: int = Field(
        2,
        ge=0,
        le=100,
        description="times a job the Ray cluster lost (a head restart) is submitted again; it resumes: "
        "an ingest commits exactly once, a training run continues from its last checkpoint",
    )
    access_log: bool = Field(False, description="uvicorn access log")
    max_request_bytes: int = Field(
        1 << 20, ge=1024, le=1 << 30, description="largest request body (413 beyond; counted as it arrives)"
    )

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> ServiceSettings:
        if self.database_url is not None and not self.database_url.startswith(DATABASE_SCHEMES):
            scheme = self.database_url.split(":", 1)[0]
            raise ValueError(
                f"database_url: scheme {scheme!r} is not supported; use sqlite:///PATH or "
                "postgresql://USER@HOST:PORT/DB"
            )
        if self.database_url is not None and database_password_in_url(self.database_url):
            raise ValueError(
                "database_url: a password in the URL is not accepted (it would end up in process "
                "listings and logs); give it in $PGPASSWORD or a passfile ($PGPASSFILE)"
            )
        if self.ray_address is not None and credentials_in_address(self.ray_address):
            raise ValueError(
                "ray_address: a password in the address is not accepted (it would end up in logs and "
                "/healthz); protect the cluster on the network (deploy/: NetworkPolicy radforge-ray) or "
                "give HTTP headers in $RAY_JOB_HEADERS"
            )
        if self.api_token is not None and len(self.api_token.get_secret_value()) < TOKEN_MIN_LENGTH:
            raise ValueError(f"api_token: at least {TOKEN_MIN_LENGTH} characters are required")
        if not is_loopback(self.host):
            if self.api_token is None and self.api_token_file is None:
                raise ValueError(
                    f"host {self.host} is not loopback: set $RADFORGE_API_TOKEN or api_token_file "
                    "(the service refuses to listen beyond loopback without a token)"
                )
            for name in ("allowed_sources", "allowed_datasets", "allowed_configs"):
                if ANY_LOCAL_PATH in getattr(self, name):
                    raise ValueError(
                        f"{name}: host {self.host} is not loopback; name the buckets/prefixes "
                        f"instead of the embedded default {ANY_LOCAL_PATH!r} (any local path)"
                    )
        return self

    @property
    def database(self) -> str:
        """The database the service opens: a SQLite file path or a PostgreSQL URL (no password)."""
        if self.database_url is None:
            return str(self.state_dir / "radforge.db")
        if self.database_url.startswith("sqlite:///"):
            return self.database_url.removeprefix("sqlite:///")
        return self.database_url

    @property
    def embedded_ray(self) -> bool:
        return self.ray_address is None

    @property
    def ray_job_submission(self) -> bool:
        """True when jobs go through Ray's Job Submission API (``ray_address`` is the dashboard's URL)."""
        return self.ray_address is not None and self.ray_address.startswith(("http://", "https://"))

    @property
    def jobs_location(self) -> str:
        return self.jobs_uri if self.jobs_uri is not None else str(self.state_dir / "jobs")


def database_password_in_url(url: str) -> bool:
    """True if a PostgreSQL URL carries a password (``user:password@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "sqlite":
        return False
    userinfo, at, _ = rest.split("/", 1)[0].rpartition("@")
    return (bool(at) and ":" in userinfo) or "password=" in rest.partition("?")[2].lower()


@dataclass(frozen=True)
class Secrets:
    """Secrets resolved at start (never logged, never returned)."""

    api_token: str
    token_source: str  # "environment", "file <path>" or "generated <path>" (safe to log)


def resolve_secrets(settings: ServiceSettings) -> Secrets:
    """The API token: from the setting/environment, the secret file, or generated into the state folder.

    A generated token exists only on loopback (the settings refuse other hosts without a token).
    """
    if settings.api_token is not None:
        return Secrets(settings.api_token.get_secret_value(), "environment")
    if settings.api_token_file is not None:
        try:
            token = read_bounded_text(settings.api_token_file, limit=TOKEN_FILE_MAX_BYTES).strip()
        except OSError as e:
            raise SettingsError(
                f"api_token_file: cannot read {settings.api_token_file} ({e.strerror})"
            ) from None
        except FileRefused as e:
            raise SettingsError(f"api_token_file: {settings.api_token_file} is refused: {e}") from None
        if len(token) < TOKEN_MIN_LENGTH:
            raise SettingsError(f"api_token_file: the token must have at least {TOKEN_MIN_LENGTH} characters")
        return Secrets(token, f"file {settings.api_token_file}")
    path = settings.state_dir / "api-token"
    return Secrets(generated_token(path), f"generated {path}")


def load_settings(
    path: str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServiceSettings:
    """Layered settings: defaults <- YAML ``path`` <- ``RADFORGE_*`` environment <- ``overrides``.

    Raises :class:`SettingsError` with one line per problem (field, message, value).
    """
    return load_model(
        ServiceSettings,
        path or None,
        overrides={k: v for k, v in (overrides or {}).items() if v is not None},
        env=ENV_FIELDS,
        environ=environ,
        error=SettingsError,
        what="settings",
        secrets=("api_token", "database_url", "ray_address"),  # never echoed (a password in a URL is refused)
    )
