"""Typed dependencies the routes declare, so a route's signature says what it uses (as
FastAPI's full-stack template does in `api/deps.py`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from service.api.runtime import Runtime, get_runtime

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
