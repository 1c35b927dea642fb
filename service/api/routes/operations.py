"""GET /health, /ready, /metrics and /info."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import RuntimeDep
from service.api.routes.common import authorize
from service.api.runtime import Runtime
from service.api.schemas import GalleryStats, Health, Info, Ready, ReadyCheck

router = APIRouter(tags=["operations"])


def package_version() -> str:
    try:
        return version("facemargin")
    except PackageNotFoundError:
        return "source"


@router.get("/health", response_model=Health)
def health() -> Health:
    """The process is alive (for restarts; readiness is /ready)."""
    return Health(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(request: Request) -> JSONResponse:
    """200 when the model is loaded, the store answers and the index matches the store;
    503 with the failing check otherwise (so a load balancer sends no traffic yet)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    checks = {"model": ReadyCheck(ok=runtime is not None, detail="" if runtime else "loading")}
    if runtime is not None:
        if runtime.gallery is None:
            error = runtime.gallery_error
            checks["gallery"] = ReadyCheck(ok=False, detail=error.message if error else "not open")
        else:
            gallery = runtime.gallery
            try:
                in_sync = await runtime.pipeline.run("store", gallery.in_sync)
                checks["store"] = ReadyCheck(ok=True)
                checks["index"] = ReadyCheck(ok=in_sync, detail="" if in_sync else "catching up")
            except Exception as error:  # the store's driver raises its own types
                checks["store"] = ReadyCheck(ok=False, detail=type(error).__name__)
    body = Ready(ready=all(c.ok for c in checks.values()), checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text format."""
    runtime.refresh_gallery_metrics()
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/info", response_model=Info, dependencies=[Depends(authorize)])
def info(runtime: RuntimeDep) -> Info:
    """The model's contract, execution providers and gallery statistics."""
    settings = runtime.settings
    stats = None
    if runtime.gallery is not None:
        s = runtime.gallery.stats()
        stats = GalleryStats(
            subjects=s.subjects,
            templates=s.templates,
            indexed_templates=s.indexed_templates,
            last_change=s.last_seq,
            store_change=s.store_seq,
            index_kind=s.index_kind,
            hnsw_ef_search=s.hnsw_ef_search,
            index_loaded_from=s.loaded_from,
            index_on_gpu=s.gpu,
        )
    return Info(
        version=package_version(),
        model=runtime.contract.model_dump(mode="json"),
        providers=runtime.pipeline.embedder.providers,
        detector=settings.detector.value,
        gallery=stats,
        gallery_error=runtime.gallery_error.message if runtime.gallery_error else None,
        default_far=settings.default_far,
        score_rule=settings.score_rule.value,
        auth=runtime.keys.enabled,
        rate_limit_per_minute=settings.rate_limit_per_minute,
    )
