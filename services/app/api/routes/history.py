"""``/api/v1/history``: the last hour of what jobs reported (rates, loss, data wait), for the dashboard."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from radforge.services.app.api.deps import Authorized, ServiceDep
from radforge.services.app.history import HistoryPublic

router = APIRouter(prefix="/api/v1", tags=["overview"], dependencies=[Authorized])


@router.get("/history", response_model=HistoryPublic)
def history(
    service: ServiceDep,
    since: Annotated[
        float | None, Query(ge=0, description="only points after this time (unix seconds); all when absent")
    ] = None,
) -> HistoryPublic:
    """Per job, its recent series (``[[unix seconds, value], ...]``) within the window, oldest first."""
    return service.history.snapshot(now=time.time(), since=since)
