"""Serving on Ray Serve: web chat over WebSocket, an OpenAI-compatible HTTP API, Prometheus metrics.

protocol.py (every wire message and limit), config.py (ServeConfig), metrics.py (Prometheus names),
generation.py (what an engine replica does with a request), tool_worker.py (the replica's calculator, in a
child process with a deadline), api.py (the FastAPI app: state, errors, health) with its rooms stream.py
(request gate + token stream), security.py (auth, Host/Origin/CSRF checks, headers, pages),
openai_routes.py (/v1) and ws_session.py (/ws/chat), app.py (the Serve deployments and the `build_app`
import path), loadtest.py (`raychat bench serve`).
"""
