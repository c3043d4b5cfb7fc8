"""Serving on Ray Serve: web chat over WebSocket, an OpenAI-compatible HTTP API, Prometheus metrics.

protocol.py (every wire message and limit), config.py (ServeConfig), metrics.py (Prometheus names),
generation.py (what an engine replica does with a request), api.py (the FastAPI app), app.py (the Serve
deployments and the `build_app` import path), loadtest.py (`raychat bench serve`).
"""
