"""Response helpers shared by the route modules."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response


def json_response(body: dict[str, Any]) -> Response:
    """JSON with numpy arrays written directly (no per-float Python objects): the response
    shapes are the pydantic models of :mod:`bgekit.server.schemas`, checked by the tests."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def counted(response: Response, request: Request) -> Response:
    """The request's long-input counts as headers: ``X-Bgekit-Truncated`` (inputs cut) and
    ``X-Bgekit-Chunked`` (inputs the long-input policy windowed or gave several CLS tokens)."""
    cut, chunked = getattr(request.state, "long_counts", (0, 0))
    response.headers["X-Bgekit-Truncated"] = str(cut)
    response.headers["X-Bgekit-Chunked"] = str(chunked)
    return response
