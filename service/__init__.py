"""clip-serve: the FastAPI server (settings, app factory, routes, batching, caches, backends, metrics)."""
