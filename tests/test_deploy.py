"""Deploy files (Dockerfile, deploy/): checked as far as a machine without Docker, GPUs or a cluster allows.

- every YAML/JSON file parses; the compose file is checked against the compose spec's structure (no Docker
  engine here, so no `docker compose config`): keys, ports, GPU reservations, volumes, mounts of files that
  exist, depends_on conditions, cross-references to the Prometheus/Grafana config;
- the Dockerfile is hadolint-clean, installs through deploy/install.sh, runs as non-root;
- the scripts the image runs (entry point, health check, compose head) behave, run here with bash;
- deploy/serve.yaml and the RayService's serveConfigV2 validate with Ray Serve's own schema (plus a field-name
  check: Ray's schema ignores unknown keys, so a typo would pass silently), the cluster-launcher config with
  the launcher's own `prepare_config` + `validate_config`, the KubeRay manifests structurally;
- the Grafana dashboards are what deploy/grafana/dashboards.py generates, lay out cleanly, cover every metric
  in CONVENTIONS.md and use only Ray metric names that Ray's own dashboards use. (The cross-check against the
  names raychat's code exports is tests/test_deploy_metrics.py.)
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
IMAGE_SRC = "/opt/raychat/src"  # where the Dockerfile copies the repository
IMAGE_UID = 1000

# Every metric CONVENTIONS.md names, by the name a PromQL query uses (histograms through _bucket).
CONVENTION_METRICS = {
    "raychat:time_to_first_token_seconds_bucket", "raychat:inter_token_latency_seconds_bucket",
    "raychat:e2e_request_latency_seconds_bucket", "raychat:request_queue_time_seconds_bucket",
    "raychat:prompt_tokens_total", "raychat:generation_tokens_total", "raychat:request_success_total",
    "raychat:tool_calls_total", "raychat:num_requests_running", "raychat:num_requests_waiting",
    "raychat:kv_cache_usage_perc",
    "raychat_train_loss", "raychat_train_tokens_per_second", "raychat_train_mfu", "raychat_train_step_seconds",
    "raychat_val_bpb", "raychat_train_step",
}
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])((?:raychat|ray)[_:][A-Za-z0-9_:]*)")


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# parsing


def test_every_yaml_and_json_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    for required in ("compose.yaml", "prometheus.yml", "serve.yaml", "ray-cluster.yaml", "k8s/rayjob-pretrain.yaml",
                     "k8s/rayservice.yaml", "k8s/storage.yaml", "grafana/dashboards/training.json",
                     "grafana/dashboards/serving.json", "grafana/provisioning/datasources/prometheus.yaml",
                     "grafana/provisioning/dashboards/raychat.yaml"):
        assert required in names, f"deploy/{required} missing"
    for p in files:
        if p.suffix == ".json":
            assert isinstance(json.loads(p.read_text()), dict), p
        else:
            docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
            assert docs and all(isinstance(d, dict) for d in docs), p


# ---------------------------------------------------------------------------------------------------------------
# compose: a structural check of the compose spec (docker compose config cannot run without an engine)

TOP_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets", "include", "models", "version"}
SERVICE_KEYS = set("""annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs
container_name cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset
credential_spec depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname
entrypoint env_file environment expose extends external_links extra_hosts gpus group_add healthcheck hostname
image init ipc isolation labels label_file links logging mac_address mem_limit mem_reservation mem_swappiness
memswap_limit models network_mode networks oom_kill_disable oom_score_adj pid pids_limit platform ports post_start
pre_stop privileged profiles provider pull_policy read_only restart runtime scale secrets security_opt shm_size
stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits use_api_socket user userns_mode
uts volumes volumes_from working_dir""".split())
DEVICE_KEYS = {"capabilities", "count", "device_ids", "driver", "options"}
BYTES_RE = re.compile(r"^\d+(\.\d+)?\s*[bkmg]?b?$", re.IGNORECASE)
DURATION_RE = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
INTERP_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$\$|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation: ${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V:+r}, $V, $$ -> $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        val = env.get(name)
        if op in (":-", "-"):
            return arg if (val is None or (op == ":-" and val == "")) else val
        if op in (":?", "?"):
            if val is None or (op == ":?" and val == ""):
                raise AssertionError(f"compose variable {name} is required: {arg}")
            return val
        if op in (":+", "+"):
            return arg if val else ""
        return val or ""
    out = INTERP_RE.sub(sub, value)
    assert "${" not in out, f"unbalanced interpolation in {value!r}"
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    raw = load_yaml(COMPOSE)
    return interpolate(raw, env={})  # the defaults a fresh `docker compose up` gets


def parse_port(spec: str) -> tuple[str, int, int]:
    """'[ip:]host:container[/proto]' -> (ip, host, container)."""
    spec = spec.split("/")[0]
    parts = spec.split(":")
    assert len(parts) in (2, 3), f"port {spec!r}: expected [IP:]HOST:CONTAINER"
    ip = parts[0] if len(parts) == 3 else "0.0.0.0"
    return ip, int(parts[-2]), int(parts[-1])


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's short-syntax volumes."""
    out = []
    for v in service.get("volumes", []):
        assert isinstance(v, str), "use the short volume syntax SRC:DST[:ro]"
        parts = v.split(":")
        assert len(parts) in (2, 3), v
        assert len(parts) == 2 or parts[2] in ("ro", "rw"), v
        out.append((parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"))
    return out


def mount_of(service: dict, target: str) -> tuple[str, str, bool]:
    for m in volume_mounts(service):
        if m[1] == target:
            return m
    raise AssertionError(f"no volume mounted at {target}")


def test_compose_structure(compose):
    assert set(compose) <= TOP_KEYS, set(compose) - TOP_KEYS
    services = compose["services"]
    assert set(services) == {"head", "prometheus", "grafana"}
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc or "build" in svc, name
        assert svc.get("restart", "no") in ("no", "always", "unless-stopped") or svc["restart"].startswith(
            "on-failure"), name
        for spec in svc.get("ports", []):
            ip, host, container = parse_port(spec)
            assert ip == "127.0.0.1", f"{name}: {spec} must be local-only by default (Ray's dashboard runs jobs)"
            assert 0 < host < 65536 and 0 < container < 65536
        for src, dst, _ in volume_mounts(svc):
            assert dst.startswith("/"), (name, dst)
            if src.startswith((".", "/")):  # bind mount: relative to the compose file, must exist in the repo
                assert (COMPOSE.parent / src).resolve().exists(), f"{name}: bind source {src} does not exist"
            else:
                assert src in declared, f"{name}: named volume {src} is not declared at the top level"
        env = svc.get("environment", {})
        assert isinstance(env, dict) and all(isinstance(v, str) for v in env.values()), \
            f"{name}: environment values must be strings (quote numbers and booleans)"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            assert cond["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep] or "HEALTHCHECK" in dockerfile_instructions_of(services[dep]), \
                    f"{name} waits for {dep} to be healthy, but {dep} has no health check"
        for key in ("stop_grace_period",):
            if key in svc:
                assert DURATION_RE.match(svc[key]), (name, key, svc[key])
        if "shm_size" in svc:
            assert BYTES_RE.match(str(svc["shm_size"])), svc["shm_size"]


def dockerfile_instructions_of(service: dict) -> set[str]:
    if "build" not in service:
        return set()
    build = service["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    return {kw for kw, _ in dockerfile_instructions(context / build.get("dockerfile", "Dockerfile"))}


def test_compose_head_has_the_gpus_ports_and_volumes(compose):
    head = compose["services"]["head"]
    build = head["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT and build["dockerfile"] == "Dockerfile"
    devices = head["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and set(devices[0]) <= DEVICE_KEYS
    dev = devices[0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert dev["count"] == "all" and "device_ids" not in dev  # count and device_ids exclude each other
    published = {parse_port(p)[2] for p in head["ports"]}
    assert {8000, 8265} <= published
    # the head's command is a script of this repo, at the path the Dockerfile copies the repo to
    cmd = head["command"]
    assert cmd[0].startswith(IMAGE_SRC + "/") and (ROOT / cmd[0][len(IMAGE_SRC) + 1:]).is_file()
    home = "/home/raychat"
    assert mount_of(head, f"{home}/.cache/raychat")[0] == "raychat-runs"
    assert mount_of(head, f"{home}/.cache/huggingface")[0] == "hf-cache"
    assert mount_of(head, "/tmp/ray") == ("ray-tmp", "/tmp/ray", False)
    env = head["environment"]
    assert env["RAYCHAT_RUN_DIR"].startswith(f"{home}/.cache/raychat/")  # on the run-dir volume
    assert env["RAYCHAT_HEALTH"] == "ray"  # so prometheus' service_healthy means "Ray is up"
    # the Ray dashboard finds Prometheus and Grafana by their service names and ports
    assert env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090" and env["RAY_GRAFANA_HOST"] == "http://grafana:3000"


def test_compose_prometheus_and_grafana_mount_the_config_they_need(compose):
    services = compose["services"]
    prom, graf, head = services["prometheus"], services["grafana"], services["head"]
    src, _, ro = mount_of(prom, "/etc/prometheus/prometheus.yml")
    assert (COMPOSE.parent / src).resolve() == DEPLOY / "prometheus.yml" and ro
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert mount_of(prom, "/tmp/ray") == ("ray-tmp", "/tmp/ray", True)
    assert {parse_port(p)[2] for p in prom["ports"]} == {9090}
    assert {parse_port(p)[2] for p in graf["ports"]} == {3000}
    src, _, ro = mount_of(graf, "/etc/grafana/provisioning")
    assert (COMPOSE.parent / src).resolve() == DEPLOY / "grafana" / "provisioning" and ro
    # dashboard providers point at folders that are mounted, with the dashboards in them
    providers = {p["name"]: p for p in load_yaml(DEPLOY / "grafana/provisioning/dashboards/raychat.yaml")["providers"]}
    src, _, _ = mount_of(graf, providers["raychat"]["options"]["path"])
    assert (COMPOSE.parent / src).resolve() == DEPLOY / "grafana" / "dashboards"
    ray_path = providers["ray"]["options"]["path"]
    assert ray_path == head["environment"]["RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR"]
    assert ray_path.startswith(mount_of(graf, "/tmp/ray")[1] + "/")
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name in {p.name for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert home.startswith(providers["raychat"]["options"]["path"] + "/")
    ds = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus" and ds[0]["url"] == "http://prometheus:9090"
    assert ds[0]["isDefault"] is True


def test_prometheus_scrapes_ray_serve_and_training(compose):
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    cfg = load_yaml(DEPLOY / "prometheus.yml")
    assert set(cfg) <= {"global", "scrape_configs", "rule_files", "alerting", "remote_write", "storage"}
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert len(jobs) == len(cfg["scrape_configs"]), "duplicate job_name"
    # Ray: the service-discovery file Ray writes into /tmp/ray (a volume prometheus shares)
    sd_files = [f for c in jobs["ray"]["file_sd_configs"] for f in c["files"]]
    assert sd_files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    head = compose["services"]["head"]
    # Serve app on the head's Serve port, training metrics on the port the head tells jobs to use
    serve_targets = [t for c in jobs["raychat-serve"]["static_configs"] for t in c["targets"]]
    assert serve_targets == ["head:8000"] and jobs["raychat-serve"]["metrics_path"] == "/metrics"
    train_targets = [t for c in jobs["raychat-train"]["static_configs"] for t in c["targets"]]
    assert jobs["raychat-train"]["honor_labels"] is True  # the gauges' own `job` label (pretrain|sft|rl)
    assert train_targets == [f"head:{head['environment']['RAYCHAT_METRICS_PORT']}"]
    assert "9101" == head["environment"]["RAYCHAT_METRICS_PORT"]  # the documented default
    for job in jobs.values():
        for c in job.get("static_configs", []):
            for t in c["targets"]:
                assert t.split(":")[0] in compose["services"], f"{t}: not a compose service"


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        buf += " " + s.rstrip("\\").strip() if buf else s.rstrip("\\").strip()
        if not s.endswith("\\"):
            kw, _, args = buf.partition(" ")
            out.append((kw.upper(), args.strip()))
            buf = ""
    return out


def hadolint_bin() -> str:
    cand = Path(sys.executable).parent / "hadolint"
    found = str(cand) if cand.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: `bash deploy/install.sh dev` installs it (hadolint-bin)"
    return found


def test_dockerfile_is_hadolint_clean():
    r = subprocess.run([hadolint_bin(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    # proves the test above can fail: root user, unpinned base image, apt without cleanup
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    r = subprocess.run([hadolint_bin(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout
    for rule in ("DL3006", "DL3008", "DL3009", "DL3002"):
        assert rule in r.stdout, (rule, r.stdout)


def test_dockerfile_installs_with_the_install_script_and_runs_as_non_root():
    ins = dockerfile_instructions(ROOT / "Dockerfile")
    froms = [a for k, a in ins if k == "FROM"]
    assert len(froms) == 2 and all(a.startswith("nvidia/cuda:") for a in froms)
    assert "cudnn-devel" in froms[0] and "cudnn-runtime" in froms[1]
    runs = [a for k, a in ins if k == "RUN"]
    install = [r for r in runs if "deploy/install.sh" in r]
    assert len(install) == 1 and "bash deploy/install.sh gpu" in install[0]
    envs = " ".join(a for k, a in ins if k == "ENV")
    assert "RAYCHAT_VENV=/opt/raychat/venv" in envs and "PATH=/opt/raychat/venv/bin:" in envs
    assert (ROOT / "deploy" / "install.sh").is_file()
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1].split(":")[0] == str(IMAGE_UID)  # numeric: Kubernetes can verify runAsNonRoot
    exposed = {int(p) for k, a in ins if k == "EXPOSE" for p in a.split()}
    assert {8000, 8265} <= exposed
    (entry,) = [json.loads(a) for k, a in ins if k == "ENTRYPOINT"]
    (health,) = [a for k, a in ins if k == "HEALTHCHECK"]
    for image_path in (entry[0], json.loads(health.split("CMD", 1)[1])[0]):
        local = ROOT / image_path[len(IMAGE_SRC) + 1:]
        assert image_path.startswith(IMAGE_SRC + "/") and local.is_file() and os.access(local, os.X_OK), image_path
    assert "raychat" in (ROOT / entry[0][len(IMAGE_SRC) + 1:]).read_text()


def dockerignored(rel: str, patterns: list[str]) -> bool:
    import fnmatch

    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        parts = rel.split("/")
        # a pattern matches the path or one of its parent directories (Docker's rule)
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), pat) or
                  (pat.startswith("**/") and fnmatch.fnmatch("/".join(parts[:i]), pat[3:])) or
                  (pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pat[3:]))
                  for i in range(1, len(parts) + 1))
        if hit:
            ignored = not neg
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for rel in (".venv/bin/python", ".git/HEAD", "libs/raychat/__pycache__/x.pyc", "raychat.egg-info/PKG-INFO"):
        assert dockerignored(rel, patterns), rel
    for rel in ("pyproject.toml", "README.md", "deploy/install.sh", "deploy/entrypoint.sh", "deploy/healthcheck.sh",
                "deploy/head.sh", "libs/raychat/common.py", "libs/raychat/data/__init__.py", "services/raychat/cli.py",
                "web/index.html"):
        assert not dockerignored(rel, patterns), rel


# ---------------------------------------------------------------------------------------------------------------
# the scripts the image runs


def run_bash(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_scripts_are_valid_bash():
    for script in sorted(DEPLOY.glob("*.sh")):
        r = run_bash(["-n", str(script)])
        assert r.returncode == 0, (script, r.stderr)


def test_entrypoint_runs_raychat_unless_given_another_program(tmp_path):
    # A fake `raychat` that echoes its argv, and a fake program named like a raychat subcommand (`info`).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in (("raychat", 'echo "raychat $*"'), ("info", 'echo "the info program"')):
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    env = {"PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    entry = str(DEPLOY / "entrypoint.sh")
    cases = {
        (): "raychat",
        ("--help",): "raychat --help",
        ("speedrun", "--preset", "gpt2_8xh100"): "raychat speedrun --preset gpt2_8xh100",
        ("info",): "raychat info",                     # a raychat subcommand wins over the `info` program
        ("no-such-program", "x"): "raychat no-such-program x",  # raychat prints the usage error
        ("echo", "hello world"): "hello world",        # other programs run unchanged (ray, bash, ...)
        ("bash", "-c", "echo from bash"): "from bash",
    }
    for argv, expected in cases.items():
        r = run_bash([entry, *argv], env=env)
        assert r.returncode == 0 and r.stdout.strip() == expected, (argv, r.stdout, r.stderr)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        code = 200 if self.path in ("/health", "/api/gcs_healthz") else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"not ready")

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_healthcheck(http_server):
    script = str(DEPLOY / "healthcheck.sh")
    down = f"http://127.0.0.1:{free_port()}/health"  # nothing listens there

    def check(mode: str, serve: str, ray: str) -> int:
        env = {"RAYCHAT_HEALTH": mode, "RAYCHAT_HEALTH_SERVE_URL": serve, "RAYCHAT_HEALTH_RAY_URL": ray}
        return run_bash([script], env=env, timeout=30).returncode

    ok_serve, ok_ray, bad = f"{http_server}/health", f"{http_server}/api/gcs_healthz", f"{http_server}/not-ready"
    assert check("auto", ok_serve, ok_ray) == 0
    assert check("auto", down, down) == 0            # a one-off command: no server, healthy while it runs
    assert check("auto", bad, down) == 1             # a server that answers 503 is unhealthy
    assert check("auto", ok_serve, bad) == 1
    assert check("ray", down, ok_ray) == 0
    assert check("ray", ok_serve, down) == 1         # asked for Ray by name: not listening = unhealthy
    assert check("serve,ray", ok_serve, down) == 1
    assert check("none", bad, bad) == 0


def test_head_script_picks_the_latest_stage_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"

    def pick(stage: str = "auto") -> subprocess.CompletedProcess:
        env = {"RAYCHAT_RUN_DIR": str(run), "RAYCHAT_SERVE_STAGE": stage}
        return run_bash(["-c", f'source "{DEPLOY / "head.sh"}" && pick_stage'], env=env)

    assert pick().returncode == 1  # nothing trained yet: keep waiting
    (run / "checkpoints" / "base" / "step_000100").mkdir(parents=True)
    assert pick().stdout.strip() == "base"
    (run / "checkpoints" / "sft").mkdir(parents=True)  # a stage folder without a step is not a checkpoint
    assert pick().stdout.strip() == "base"
    (run / "checkpoints" / "sft" / "step_000010").mkdir()
    assert pick().stdout.strip() == "sft"
    assert pick("base").stdout.strip() == "base"
    assert pick("rl").returncode == 1


RAYCHAT_CMD_RE = re.compile(r"\braychat ((?:speedrun|pretrain|sft|rl|serve|eval|selftest)\b[^\n\\`'|;&]*)")


def documented_raychat_commands() -> list[str]:
    """Every `raychat <job> ...` command line the deploy files run or show (YAML values and comments), plus the
    compose head's `raychat serve` call with its shell variables filled in."""
    cmds = []
    for p in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        cmds += [m.strip() for m in RAYCHAT_CMD_RE.findall(p.read_text())]
    head = (DEPLOY / "head.sh").read_text()
    (serve,) = re.findall(r"raychat (serve [^\n]*)\\", head)
    cmds.append(serve.replace('"$run_dir"', "/run").replace('"$stage"', "sft"))
    return cmds


def test_documented_raychat_commands_parse():
    # the flags in manifests and comments are flags the CLI has (argparse exits on an unknown one)
    from raychat.cli import build_parser

    cmds = documented_raychat_commands()
    assert any(c.startswith("speedrun") for c in cmds) and any(c.startswith("pretrain") for c in cmds)
    assert any(c.startswith("serve --address auto") for c in cmds)
    for cmd in cmds:
        argv = cmd.split()
        parser, _ = build_parser(argv[0])
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"`raychat {cmd}` does not parse") from e


# ---------------------------------------------------------------------------------------------------------------
# Ray: Serve config, cluster launcher, KubeRay


def _fields(cls) -> set[str]:
    return set(getattr(cls, "model_fields", None) or cls.__fields__)


def validate_serve_config(cfg: dict):
    """Ray Serve's own schema, plus unknown-key checks: Ray's models ignore extra keys, so a typo like
    `max_replica` would be accepted and silently do nothing."""
    from ray.serve.config import AutoscalingConfig, HTTPOptions
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    parsed = ServeDeploySchema.model_validate(cfg) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(cfg)
    assert set(cfg) <= _fields(ServeDeploySchema), set(cfg) - _fields(ServeDeploySchema)
    assert set(cfg.get("http_options", {})) <= _fields(HTTPOptions)
    for app in cfg["applications"]:
        assert set(app) <= _fields(ServeApplicationSchema), set(app) - _fields(ServeApplicationSchema)
        for dep in app.get("deployments", []):
            assert set(dep) <= _fields(DeploymentSchema), set(dep) - _fields(DeploymentSchema)
            assert set(dep.get("ray_actor_options", {})) <= _fields(RayActorOptionsSchema)
            auto = dep.get("autoscaling_config")
            if auto:
                assert set(auto) <= _fields(AutoscalingConfig), set(auto) - _fields(AutoscalingConfig)
                AutoscalingConfig(**auto)
    return parsed


def test_serve_config_validates_with_ray_serve_schema():
    cfg = load_yaml(DEPLOY / "serve.yaml")
    parsed = validate_serve_config(cfg)
    (app,) = parsed.applications
    assert app.import_path == "raychat.serve.app:build_app"
    assert cfg["http_options"]["port"] == 8000 and cfg["http_options"]["host"] == "0.0.0.0"
    # the unknown-key check has teeth
    typo = copy.deepcopy(cfg)
    typo["http_options"]["prot"] = 8000
    with pytest.raises(AssertionError):
        validate_serve_config(typo)


def test_serve_config_args_are_a_valid_raychat_serve_config():
    # build_app(args) turns the args into a ServeConfig, which rejects unknown keys and inconsistent scaling:
    # check the file's args the same way, so a renamed field fails here and not at `serve deploy` time.
    from raychat.serve import app as serve_app
    from raychat.serve.config import ServeConfig

    module, func = load_yaml(DEPLOY / "serve.yaml")["applications"][0]["import_path"].split(":")
    assert module == serve_app.__name__ and callable(getattr(serve_app, func))
    args = load_yaml(DEPLOY / "serve.yaml")["applications"][0]["args"]
    config = ServeConfig.from_dict(args)
    assert config.stage in ("base", "sft", "rl") and config.run_dir.startswith("/mnt/shared/")
    assert config.num_gpus == 1  # explicit: on KubeRay the app is built on the CPU-only head
    assert config.autoscaling["max_replicas"] >= config.autoscaling["min_replicas"] >= 1
    with pytest.raises(ValueError, match="unknown"):
        ServeConfig.from_dict({**args, "num_gpu": 1})


def k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def test_rayservice_embeds_the_same_serve_app():
    (svc,) = k8s_docs("rayservice.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])
    validate_serve_config(embedded)
    standalone = load_yaml(DEPLOY / "serve.yaml")
    assert embedded["applications"] == standalone["applications"]
    assert embedded["http_options"]["port"] == standalone["http_options"]["port"]


def pod_templates(cluster_spec: dict) -> list[tuple[str, dict, dict]]:
    """(group name, rayStartParams, pod spec) for the head and every worker group."""
    out = [("head", cluster_spec["headGroupSpec"]["rayStartParams"], cluster_spec["headGroupSpec"]["template"]["spec"])]
    for g in cluster_spec.get("workerGroupSpecs", []):
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        out.append((g["groupName"], g["rayStartParams"], g["template"]["spec"]))
    return out


def test_kuberay_manifests():
    import ray

    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned_ray = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', pyproject).group(1)
    assert ray.__version__ == pinned_ray
    (pvc,) = k8s_docs("storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    (job,) = k8s_docs("rayjob-pretrain.yaml")
    (svc,) = k8s_docs("rayservice.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["raychat", "speedrun"] and "gpt2_8xh100" in entry
    run_dir = entry[entry.index("--run-dir") + 1]
    assert run_dir.startswith("/mnt/shared/")  # on the shared volume: every node and a resumed job see it
    serve_run_dir = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["args"]["run_dir"]
    assert serve_run_dir == run_dir  # RayService serves what the RayJob trained
    images = set()
    for cluster_spec in (job["spec"]["rayClusterSpec"], svc["spec"]["rayClusterConfig"]):
        assert cluster_spec["rayVersion"] == pinned_ray
        gpus = 0
        for group, params, pod in pod_templates(cluster_spec):
            # KubeRay's rayStartParams is map[string]string: a bare number fails the CRD validation
            assert all(isinstance(v, str) for v in params.values()), (group, params)
            assert pod["securityContext"]["runAsUser"] == IMAGE_UID and pod["securityContext"]["fsGroup"] == IMAGE_UID
            volumes = {v["name"]: v for v in pod["volumes"]}
            (container,) = pod["containers"]
            images.add(container["image"])
            res = container["resources"]
            assert res["requests"] == res["limits"], group  # extended resources (GPUs) need requests == limits
            gpus += int(res["limits"].get("nvidia.com/gpu", 0))
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert volumes[mounts["/mnt/shared"]["name"]]["persistentVolumeClaim"]["claimName"] == \
                pvc["metadata"]["name"]
            for m in container["volumeMounts"]:
                assert m["name"] in volumes, (group, m)
            names = [p["name"] for p in container.get("ports", [])]
            assert len(names) == len(set(names)) and all(len(n) <= 15 for n in names), names
        assert gpus > 0
    assert len(images) == 1  # one image for training and serving


def test_ray_cluster_launcher_config_validates():
    # What `ray up` does before touching any machine: fill defaults, then validate against ray-schema.json.
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load_yaml(DEPLOY / "ray-cluster.yaml")
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local" and prepared["provider"]["worker_ips"]
    opts = " ".join(cfg["docker"]["run_options"])
    assert "--gpus all" in opts and "--shm-size" in opts
    # shared storage on every node at the same path: run dirs (with Ray Train's storage_path inside)
    assert "-v /mnt/shared:/mnt/shared" in opts
    assert any("--metrics-export-port" in c for c in cfg["head_start_ray_commands"])
    bad = copy.deepcopy(cfg)
    bad["docker"]["run_option"] = bad["docker"].pop("run_options")  # the schema rejects unknown keys
    with pytest.raises(Exception, match="run_option"):
        validate_config(prepare_config(bad))


# ---------------------------------------------------------------------------------------------------------------
# Grafana dashboards


def load_generator():
    spec = importlib.util.spec_from_file_location("raychat_dashboards", DEPLOY / "grafana" / "dashboards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dashboard_exprs() -> dict[str, list[str]]:
    out = {}
    for p in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        d = json.loads(p.read_text())
        out[p.name] = [t["expr"] for panel in d["panels"] for t in panel.get("targets", [])]
    return out


def referenced_metrics() -> set[str]:
    return {m for exprs in dashboard_exprs().values() for e in exprs for m in METRIC_RE.findall(e)}


def test_dashboards_are_generated_from_the_script():
    gen = load_generator()
    assert set(gen.DASHBOARDS) == {p.name for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    for name, build in gen.DASHBOARDS.items():
        on_disk = (DEPLOY / "grafana" / "dashboards" / name).read_text()
        assert on_disk == gen.render(build), f"{name} is stale: run `python deploy/grafana/dashboards.py`"


def test_dashboards_lay_out_and_query_cleanly():
    uids = set()
    for p in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        d = json.loads(p.read_text())
        assert d["uid"] not in uids and len(d["uid"]) <= 40
        uids.add(d["uid"])
        assert [v["name"] for v in d["templating"]["list"]] == ["datasource"]
        ids, cells = set(), set()
        for panel in d["panels"]:
            assert panel["id"] not in ids
            ids.add(panel["id"])
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{p.name}: panel {panel['title']!r} overlaps another"
                    cells.add((x, y))
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
            for t in panel["targets"]:
                assert METRIC_RE.search(t["expr"]), (panel["title"], t["expr"])
                assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
                assert t["expr"].count("[") == t["expr"].count("]"), t["expr"]
                # a histogram is only queried through its buckets, and rate() only on counters/buckets
                for fn_arg in re.findall(r"rate\(([A-Za-z0-9_:]+)", t["expr"]):
                    assert fn_arg.endswith(("_total", "_bucket", "_sum", "_count")), t["expr"]


def test_dashboards_cover_every_metric_in_the_conventions():
    missing = CONVENTION_METRICS - referenced_metrics()
    assert not missing, f"metrics without a panel: {sorted(missing)}"
    exprs = dashboard_exprs()
    assert all("raychat_train" not in e for e in exprs["serving.json"])
    assert all("raychat:" not in e for e in exprs["training.json"])


def test_dashboards_use_only_ray_metrics_that_ray_exports():
    # Ray 2.60's own Grafana dashboards are generated from these panel modules; the metric names they query
    # are the names Ray really exports (with the ray_ prefix and _total/_bucket suffixes as exposed).
    spec = importlib.util.find_spec("ray.dashboard.modules.metrics.dashboards")
    folder = Path(spec.submodule_search_locations[0])
    ray_names = {m for f in folder.glob("*_panels.py") for m in re.findall(r"ray_[A-Za-z0-9_:]+", f.read_text())}
    assert "ray_serve_num_ongoing_http_requests" in ray_names and "ray_node_gpus_utilization" in ray_names
    used = {m for m in referenced_metrics() if m.startswith("ray_")}
    assert used, "the dashboards should show Ray Serve / node metrics too"
    assert used <= ray_names, f"not exported by Ray {sorted(used - ray_names)}"


def test_training_metrics_and_data_dirs_agree_everywhere(compose):
    """Where training runs in a container or pod, rank 0's metrics listen on every interface on the port the
    scrape config names, and RAYCHAT_HOME (runs/ and the downloaded data/) is on the storage every node shares."""
    prom = load_yaml(DEPLOY / "prometheus.yml")
    (train_job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "raychat-train"]
    ((target,),) = [sc["targets"] for sc in train_job["static_configs"]]
    head = compose["services"]["head"]
    env = head["environment"]
    assert target == f"head:{env['RAYCHAT_METRICS_PORT']}" and env["RAYCHAT_METRICS_HOST"] == "0.0.0.0"
    runs_volume = [v for v in head["volumes"] if v.split(":")[1] == env["RAYCHAT_HOME"]]
    assert runs_volume, "RAYCHAT_HOME must be the mounted volume"
    (job,) = k8s_docs("rayjob-pretrain.yaml")
    for group, _, pod in pod_templates(job["spec"]["rayClusterSpec"]):
        (container,) = pod["containers"]
        kenv = {e["name"]: e.get("value") for e in container["env"]}
        assert kenv["RAYCHAT_METRICS_HOST"] == "0.0.0.0", group
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["train-metrics"] == int(kenv["RAYCHAT_METRICS_PORT"]), group
        assert kenv["RAYCHAT_HOME"].startswith("/mnt/shared/") and kenv["HF_HOME"].startswith("/mnt/shared/"), group
    launcher = load_yaml(DEPLOY / "ray-cluster.yaml")
    opts = dict(o.split()[1].split("=", 1) for o in launcher["docker"]["run_options"] if o.startswith("-e "))
    assert opts["RAYCHAT_METRICS_HOST"] == "0.0.0.0" and opts["RAYCHAT_HOME"].startswith("/mnt/shared/")
    header = (DEPLOY / "k8s" / "rayjob-pretrain.yaml").read_text()
    assert "--data-dir /mnt/shared/raychat/data/climbmix" in header   # the header's pretrain example is complete
