"""``/api/v1/sources``: watched prefixes (hospital delivery buckets) that the scheduler polls."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response, status

from radforge.services.app.api.deps import Authorized, SchedulerDep, SettingsDep, StoreDep
from radforge.services.app.models import PollResult, SourceCreate, SourcePublic, SourceRecord, SourceUpdate
from radforge.services.app.security import uri_allowed
from radforge.services.schedule.decisions import next_poll

router = APIRouter(prefix="/api/v1/sources", tags=["sources"], dependencies=[Authorized])


def _found(store: StoreDep, source_id: str) -> SourceRecord:
    source = store.get_source(source_id)
    if source is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no source {source_id!r}")
    return source


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SourcePublic)
def create_source(
    body: SourceCreate, store: StoreDep, settings: SettingsDep, response: Response
) -> SourcePublic:
    """Watch a prefix: each folder below it is an archive, ingested once into ``dataset_uri``."""
    for field, uri, allowed, what in (
        ("uri", body.uri, settings.allowed_sources, "sources"),
        ("dataset_uri", body.dataset_uri, settings.allowed_datasets, "datasets"),
    ):
        if not uri_allowed(uri, allowed):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"{field}: {uri} is outside the allowed {what} (allowed_{what} in the settings)",
            )
    if store.source_name_taken(body.name):
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT, detail=f"a source named {body.name!r} exists"
        )
    now = time.time()
    record = SourceRecord.model_validate(
        {
            **body.model_dump(mode="json", exclude={"config"}),
            "id": uuid.uuid4().hex,
            "config": body.config.model_dump(mode="json", exclude_defaults=True),
            "created_at": now,
            "updated_at": now,
            "next_poll_at": now,  # first poll at once
        }
    )
    store.insert_source(record)
    response.headers["Location"] = f"{router.prefix}/{record.id}"
    return SourcePublic.from_record(record)


@router.get("", response_model=list[SourcePublic])
def list_sources(store: StoreDep) -> list[SourcePublic]:
    """Every source, by name."""
    return [SourcePublic.from_record(s) for s in store.list_sources()]


@router.get("/{source_id}", response_model=SourcePublic)
def get_source(source_id: str, store: StoreDep) -> SourcePublic:
    """One source with its last poll (time, lag, error) and next poll time."""
    return SourcePublic.from_record(_found(store, source_id))


@router.patch("/{source_id}", response_model=SourcePublic)
def update_source(source_id: str, body: SourceUpdate, store: StoreDep) -> SourcePublic:
    """Enable/disable a source, change its priority, schedule or attempts."""
    source = _found(store, source_id)
    values = body.model_dump(exclude_unset=True, exclude_none=True)
    if "interval_seconds" in values:
        values["cron"] = None
    if "cron" in values and values["cron"] is not None:
        values["interval_seconds"] = None
    if "interval_seconds" in values or "cron" in values:
        values["next_poll_at"] = next_poll(
            interval_seconds=values.get("interval_seconds"),
            cron=values.get("cron"),
            after=datetime.now(tz=UTC),
        ).timestamp()
    values["updated_at"] = time.time()
    store.update_source(source.id, values)
    return SourcePublic.from_record(_found(store, source_id))


@router.delete("/{source_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_source(source_id: str, store: StoreDep) -> Response:
    """Stop watching a prefix (its jobs and the datasets stay)."""
    if not store.delete_source(source_id):
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no source {source_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{source_id}/poll", response_model=PollResult)
def poll_source(source_id: str, store: StoreDep, scheduler: SchedulerDep) -> PollResult:
    """Poll now (without waiting for the schedule): the decision for every archive found, jobs submitted."""
    return scheduler.poll(_found(store, source_id))
