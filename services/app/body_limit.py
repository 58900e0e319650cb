"""A limit on request bodies, enforced while they arrive (``max_request_bytes``; 413 beyond).

An ASGI middleware, below every route: a ``Content-Length`` over the limit is answered at once, and
the bytes actually received are counted (a chunked body has no length, and a stated length can be
a lie), so no request makes the service hold more than the limit in memory.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes (setting max_request_bytes)"


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """Answer 413 to a request whose body exceeds ``limit`` bytes, counting them as they arrive."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # raised inside the route's body read: FastAPI re-raises HTTPExceptions as they are
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=_too_large(self.limit))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as e:
            if e.status_code != status.HTTP_413_CONTENT_TOO_LARGE or started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Any = JSONResponse(
            {"detail": _too_large(self.limit)},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
