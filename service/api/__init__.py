"""The HTTP service: the FastAPI app and its lifespan (app.py), routers (routes/), typed
dependencies (deps.py), settings from FACEMARGIN_* variables (settings.py), everything built
once at startup (runtime.py), request and response models (schemas.py), API keys and rate
limits (security.py), metrics and the embedder's micro-batching."""
