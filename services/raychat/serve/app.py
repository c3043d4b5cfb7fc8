"""raychat on Ray Serve: an `EngineDeployment` (one Engine per replica, continuous batching inside) behind an
`Ingress` (the FastAPI app of api.py) that streams from it through a DeploymentHandle.

    raychat serve --run-dir runs/tiny --stage sft                    # tiny CPU: local Ray, 127.0.0.1:8000
    raychat serve --checkpoint /ckpt/sft --replicas 1 --port 8000    # one GPU: one replica, num_gpus=1
    raychat serve --run-dir /shared/run --replicas 2 --max-replicas 8 --host 0.0.0.0   # 8 GPUs, autoscaled
    serve run raychat.serve.app:build_app run_dir=/shared/run stage=sft          # the Serve CLI
    serve deploy deploy/serve.yaml        # a cluster / KubeRay RayService (import_path: raychat.serve.app:build_app)

Why two deployments: the engine replicas are the expensive, GPU-bound part and scale with load
(autoscaling on ongoing requests); the ingress is cheap Python that owns connections, validation, auth,
limits and metrics, and never holds a model. The streaming handle carries lists of small event dicts
(generation.ChatService.generate_chunks: the first token alone, then `stream_interval` tokens per item);
cancelling it (client disconnect, `stop`) cancels the replica's generator, which
cancels the engine request, freeing its KV-cache slot at the next step.

Model loading happens in a background thread of the replica, so Serve sees a healthy replica at once
and GET /ready answers 503 until the weights are in; a load failure makes the replica's health check
fail (Serve replaces it) and /ready reports the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from raychat.serve.config import ServeConfig
from raychat.serve.generation import Unbatched


@serve.deployment(name="EngineDeployment", health_check_period_s=10, graceful_shutdown_timeout_s=10)
class EngineDeployment:
    """One engine (model + KV cache + scheduler) per replica."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.service = None
        self.error: str | None = None
        self.replica = _replica_tag()
        self.t_start = time.time()
        self._thread = threading.Thread(target=self._load, name="raychat-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from raychat.serve.generation import ChatService

        try:
            svc = ChatService.load(self.config)
            svc.replica = self.replica
            self.service = svc
            print(f"raychat: replica {self.replica} loaded {svc.info()} in {time.time() - self.t_start:.1f} s",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - reported by ready() and check_health()
            self.error = f"{type(e).__name__}: {e}"
            print(f"raychat: replica {self.replica} failed to load the model: {self.error}", flush=True)

    def check_health(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"model failed to load: {self.error}")

    def ready(self) -> dict:
        return {"replica": self.replica, "ready": self.service is not None, "error": self.error}

    def info(self) -> dict:
        if self.service is None:
            raise RuntimeError("model not loaded yet")
        return self.service.info()

    def stats(self) -> dict:
        if self.service is None:
            return {"replica": self.replica, "running": 0, "waiting": 0, "kv_cache_usage": 0.0}
        return self.service.stats()

    async def generate(self, request: dict) -> AsyncIterator[dict]:
        if self.service is None:
            msg = self.error or "model is loading"
            yield [{"type": "error", "code": "not_ready", "message": f"{msg}; retry shortly", "status": 503}]
            return
        async for chunk in self.service.generate_chunks(request):
            yield chunk

    def __del__(self):
        if self.service is not None:
            self.service.shutdown()


def _replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_tag
    except Exception:  # noqa: BLE001 - outside a replica (direct construction in a test)
        return "local"


class HandleEngineClient:
    """The engine-client interface of api.py over a Serve DeploymentHandle to EngineDeployment."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        self.stream = handle.options(stream=True)

    def generate(self, request: dict):
        # DeploymentResponseGenerator of event lists (async-iterable, cancel()), read one event at a time
        return Unbatched(self.stream.generate.remote(request))

    async def stats(self) -> list[dict]:
        results = await self.handle.broadcast("stats").results_async(timeout_s=2.0, return_exceptions=True)
        return [r for r in results if isinstance(r, dict)]

    async def ready(self) -> dict:
        results = await self.handle.broadcast("ready").results_async(timeout_s=3.0, return_exceptions=True)
        states = [r for r in results if isinstance(r, dict)]
        ready = [s for s in states if s.get("ready")]
        return {"ready": bool(ready), "replicas": len(states), "ready_replicas": len(ready),
                "errors": [s["error"] for s in states if s.get("error")]}

    async def info(self) -> dict:
        return await self.handle.info.remote()


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """FastAPI front door (api.build_api); routes every generation to EngineDeployment."""

    def __init__(self, engine: DeploymentHandle, config: ServeConfig):
        self.config = config
        self.client = HandleEngineClient(engine)

    def __serve_build_asgi_app__(self):
        from raychat.serve.api import build_api

        return build_api(self.config, self.client)


def build_deployments(config: ServeConfig, set_scaling: bool = True):
    """-> the bound application (Ingress over EngineDeployment) with resources and scaling from config.
    set_scaling=False leaves replica counts to a Serve config file's `deployments:` section."""
    num_gpus = config.resolved_num_gpus()
    engine_opts = dict(
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=config.max_ongoing_requests,
    )
    if config.autoscaling is not None:
        engine_opts["autoscaling_config"] = dict(config.autoscaling)
    elif set_scaling:
        engine_opts["num_replicas"] = config.replicas
    engine = EngineDeployment.options(**engine_opts).bind(config)
    ingress = Ingress.options(num_replicas=config.ingress_replicas,
                              ray_actor_options={"num_cpus": config.ingress_cpus},
                              max_ongoing_requests=max(1000, 4 * config.limits.max_concurrent_requests))
    return ingress.bind(engine, config)


def app_config(args: dict) -> ServeConfig:
    """build_app's ServeConfig. The bind address is Serve's http_options there (0.0.0.0 in deploy/), not
    ServeConfig.host: without an explicit list, answer any Host name, as `raychat serve --host 0.0.0.0` does."""
    return ServeConfig.from_dict({"allowed_hosts": ["*"], **dict(args)})


def build_app(args: dict):
    """Import-path builder for `serve run raychat.serve.app:build_app key=value ...`, deploy/serve.yaml and
    KubeRay: `args` are ServeConfig fields (strings from the CLI, typed values from YAML). host/port are
    Serve's http_options there, not ours (so allowed_hosts defaults to any name; set it, or an api_key)."""
    config = app_config(args)
    print(f"raychat serve config: {config.to_json()}", flush=True)
    # a YAML `deployments:` entry may set autoscaling_config; a num_replicas from code would then clash
    return build_deployments(config, set_scaling="replicas" in args or "autoscaling" in args)


def start(config: ServeConfig, wait_ready_s: float | None = 600.0) -> str:
    """Start Serve on the connected Ray (ray.init first), deploy the app, wait until a replica has loaded the
    model (unless wait_ready_s is None). Returns the base URL."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("call ray.init() before raychat.serve.app.start()")
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_deployments(config), name=config.app_name, route_prefix="/")
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    if wait_ready_s is not None:
        wait_until_ready(url, config.api_key, wait_ready_s)
    return url


def wait_until_ready(url: str, api_key: str | None, timeout_s: float) -> None:
    import httpx

    from raychat.common import RaychatError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/ready", headers=headers, timeout=10.0)
            if r.status_code == 200:
                return
            last = r.text
            if "failed to load" in last or "Error" in last:
                raise RaychatError(f"the engine could not load the model: {r.json()['error']['message']}")
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.5)
    raise RaychatError(f"the app did not become ready within {timeout_s:.0f} s (last answer: {last[:200]})")
