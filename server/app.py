"""``create_app(cfg)``: the FastAPI gateway. The gateway's parts (``server.gateway``) are
built and started in the lifespan into ``app.state.gateway``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from predictor.types import LengthPredictor
from server.api import router
from server.auth import ApiKeyAuth
from server.auth_guard import ApiKeyGuard, open_paths
from server.config import GatewayConfig
from server.errors import install_error_handlers
from server.fast_lane import CompletionFastLane
from server.gateway import Gateway, build_gateway

__all__ = ["Gateway", "create_app", "default_predictor"]

PredictorFactory = Callable[[GatewayConfig], LengthPredictor]


def default_predictor(cfg: GatewayConfig) -> LengthPredictor:
    # Imported here: the predictor pulls in LightGBM, which `lengthwise --help` must not pay for.
    from predictor.api import load_served_predictor

    return load_served_predictor(cfg.predictor_dir)


def create_app(
    cfg: GatewayConfig,
    *,
    predictor: LengthPredictor | None = None,
    predictor_factory: PredictorFactory = default_predictor,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = build_gateway(
            cfg, predictor if predictor is not None else predictor_factory(cfg),
            registry if registry is not None else CollectorRegistry(), clock)
        app.state.gateway = gateway
        app.state.rate_limiter = gateway.rate_limiter
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="Lengthwise gateway",
        description="OpenAI-compatible, length-aware scheduling gateway in front of vLLM.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Added first, so it runs inside the key guard (the outer of the two).
    app.add_middleware(CompletionFastLane)
    app.add_middleware(ApiKeyGuard, auth=ApiKeyAuth(cfg.api_keys),
                       open_paths=open_paths(cfg.metrics_require_auth))
    app.include_router(router)
    return app
