"""Ingest configuration: one pydantic model, defaults that work, YAML file, CLI overrides.

Resolved once at the start of a job (:func:`load_config`), hashed (:meth:`IngestConfig.content_hash`)
and recorded in the dataset catalog, then turned into explicit arguments for each stage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from radforge.config import ConfigError, load_model
from radforge.windowing import CT_PRESETS

if TYPE_CHECKING:
    from radforge.ingest.series import PlanRules

Plane = Literal["axial", "coronal", "sagittal"]
SALT_ENV = "RADFORGE_SALT"
SALT_MIN_CHARACTERS = 8  # not counting whitespace
MR_WINDOWS = ("raw", "pct")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowConfig(_Model):
    """Intensity representations written per slice; each becomes its own sample."""

    ct: list[str] = Field(default_factory=lambda: ["raw"], description="'raw' (int16 HU) and/or CT presets")
    mr: list[str] = Field(default_factory=lambda: ["raw"], description="'raw' (uint16) and/or 'pct' (uint8)")

    @field_validator("ct")
    @classmethod
    def _ct_known(cls, v: list[str]) -> list[str]:
        valid = ["raw", *CT_PRESETS]
        bad = [w for w in v if w not in valid]
        if bad or not v:
            raise ValueError(f"unknown CT window {bad or '(empty list)'}; valid: {', '.join(valid)}")
        return v

    @field_validator("mr")
    @classmethod
    def _mr_known(cls, v: list[str]) -> list[str]:
        bad = [w for w in v if w not in MR_WINDOWS]
        if bad or not v:
            raise ValueError(f"unknown MR window {bad or '(empty list)'}; valid: {', '.join(MR_WINDOWS)}")
        return v


class ContentConfig(_Model):
    """Foreground maps and the empty-slice filter."""

    fg_patch: int = Field(16, ge=1, le=256, description="cell size in pixels of the stored foreground map")
    min_foreground: float = Field(
        0.02, ge=0.0, le=1.0, description="slices below this body share are dropped"
    )
    ct_threshold_hu: float = Field(-500.0, description="HU above which a CT pixel counts as body")


class GeometryConfig(_Model):
    """Checks applied when a series is assembled into a volume."""

    spacing_tolerance: float = Field(0.1, gt=0.0, le=1.0, description="relative gap deviation allowed")
    max_pixels_per_slice: int = Field(
        8192 * 8192, gt=0, description="refuse larger headers before allocating"
    )
    max_slices: int = Field(5000, gt=0, description="refuse series with more slices than this")


class ReformatConfig(_Model):
    """When a volume is also cut across its slices (the plane policy, see radforge.ingest.planes)."""

    max_anisotropy: float = Field(
        2.0, gt=0.0, description="planes: auto reformats only when slice spacing <= this x in-plane spacing"
    )
    min_side: int = Field(64, ge=1, description="no reformatted slice shorter than this many pixels")


class VolumeConfig(_Model):
    """4D series (fMRI time points, diffusion directions, echoes, cardiac phases): volumes kept per series."""

    max_per_series: int = Field(
        4,
        ge=1,
        description="volumes ingested per series, chosen evenly and always the first: a 300-time-point "
        "fMRI would otherwise flood the dataset with near-duplicates",
    )


class ImageTypeConfig(_Model):
    """Which image kinds (ImageType values 3 on) are skipped by rule."""

    skip: list[Literal["magnitude", "phase", "real", "imaginary"]] = Field(
        default_factory=lambda: list[Literal["magnitude", "phase", "real", "imaginary"]](
            ["phase", "real", "imaginary"]
        ),
        description="kinds skipped as non_magnitude_image (phase maps are not anatomy)",
    )


class DeidConfig(_Model):
    """De-identification (DICOM PS3.15 Annex E basic profile, allow-list of attributes)."""

    salt: SecretStr | None = Field(None, description=f"salt for series keys; default from ${SALT_ENV}")
    keep_sex: bool = Field(False, description="write PatientSex into meta")
    keep_age_bucket: bool = Field(False, description="write a decade age bucket into meta")

    def resolved_salt(self) -> bytes:
        """The salt as bytes; refuses to run without one (keys would be guessable)."""
        value = self.salt.get_secret_value() if self.salt else os.environ.get(SALT_ENV)
        # whitespace or a few characters can be guessed, and with them every pseudonymous key
        if not value or len("".join(value.split())) < SALT_MIN_CHARACTERS:
            raise ConfigError(
                f"deid.salt: a salt of at least {SALT_MIN_CHARACTERS} characters that are not whitespace "
                f"is required; set ${SALT_ENV} (e.g. `openssl rand -hex 32`; keep it secret and stable: "
                "series keys and de-duplication depend on it)"
            )
        return value.encode()


class ShardConfig(_Model):
    """MDS shard writing."""

    size_limit: int = Field(64 << 20, ge=1 << 12, description="bytes per shard before a new one starts")
    compression: str | None = Field("zstd:1", description="MDS compression 'codec[:level]' or null")
    hashes: list[str] = Field(default_factory=lambda: ["xxh64"], description="integrity hashes per shard")
    samples_per_task: int | None = Field(
        None,
        ge=1,
        description="None: each decoding task writes its own shards (no object-store hop); "
        "a number bundles at least that many samples per write task",
    )

    @field_validator("compression")
    @classmethod
    def _codec_known(cls, v: str | None) -> str | None:
        from radforge.sharder.mds import parse_compression

        parse_compression(v)  # ShardFormatError (a ValueError) names the valid codecs
        return v


class RayConfig(_Model):
    """Where the job runs; not part of the config hash (it does not change the output)."""

    address: str | None = Field(
        None, description="Ray cluster address; default: start a local Ray on 127.0.0.1"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (default: all)")
    header_batch_size: int = Field(1024, ge=1, description="files per header-reading batch within a task")
    header_files_per_task: int = Field(
        2048,
        ge=1,
        description="most files per header-reading task (a small archive is spread over every CPU "
        "in one wave): a header takes well under a millisecond, so smaller tasks spend more time "
        "being scheduled than reading",
    )
    slices_per_task: int = Field(
        512,
        ge=1,
        description="decode work per task, in 512x512-slice equivalents: a task takes whole series "
        "(a longer series is a task of its own), in whole waves over the CPUs; bigger tasks spend "
        "less time being scheduled, smaller ones balance the end of a job better",
    )
    distributed_grouping_min_objects: int = Field(
        200_000,
        ge=0,
        description="archives with at least this many objects group series with a Ray "
        "Data groupby (hash shuffle); smaller ones group their headers on the driver (faster)",
    )


class IngestConfig(_Model):
    """Everything ``radforge ingest`` needs besides the source and destination URIs."""

    archive_id: str | None = Field(
        None, description="name recorded in the catalog; default: source folder name"
    )
    planes: list[Literal["auto", "axial", "coronal", "sagittal"]] = Field(
        default_factory=lambda: list[Literal["auto", "axial", "coronal", "sagittal"]](["auto"]),
        min_length=1,
        description="'auto' alone (the acquired plane, others only when near-isotropic) or a list of planes",
    )
    modalities: list[Literal["CT", "MR"]] = Field(
        default_factory=lambda: list[Literal["CT", "MR"]](["CT", "MR"]),
        min_length=1,
        description="modalities this dataset takes (one dataset per modality lets training mix them)",
    )
    windows: WindowConfig = WindowConfig()
    content: ContentConfig = ContentConfig()
    geometry: GeometryConfig = GeometryConfig()
    reformat: ReformatConfig = ReformatConfig()
    volumes: VolumeConfig = VolumeConfig()
    image_types: ImageTypeConfig = ImageTypeConfig()
    deid: DeidConfig = DeidConfig()
    shards: ShardConfig = ShardConfig()
    ray: RayConfig = RayConfig()

    @field_validator("planes")
    @classmethod
    def _auto_alone(cls, v: list[str]) -> list[str]:
        if "auto" in v and len(v) > 1:
            raise ValueError(f"'auto' stands alone (got {v}); or list planes: axial, coronal, sagittal")
        return v

    def plan_rules(self) -> PlanRules:
        """The planning rules of this config, as :func:`radforge.ingest.series.plan_group` takes them."""
        from radforge.ingest.series import PlanRules

        return PlanRules(max_volumes=self.volumes.max_per_series, skip_kinds=frozenset(self.image_types.skip))

    def content_hash(self) -> str:
        """Hash of what determines the output (excludes Ray settings and the salt)."""
        data = self.model_dump(mode="json", exclude={"ray": True, "archive_id": True, "deid": {"salt"}})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_config(
    path: str | None = None, *, overrides: Mapping[str, Any] | None = None, model: type[_Model] = IngestConfig
) -> Any:
    """Layered config: defaults <- YAML file <- overrides; raises :class:`ConfigError` with one clear line."""
    return load_model(model, path or None, overrides=overrides or {}, what="ingest config")
