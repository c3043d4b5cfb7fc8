"""Safe defaults in deploy/: only the chat port leaves loopback unless another port is asked for by name, no
default admin password, the Ray dashboard (job submission = running code) never on a public interface, and a
NetworkPolicy that admits only the chat port from outside the Ray pods (evaluated with NetworkPolicy's rules)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
import yaml
from test_deploy import COMPOSE, DEPLOY, interpolate, load_yaml, parse_port

BIND_VARS = {8000: "RAYCHAT_BIND", 8265: "RAYCHAT_DASHBOARD_BIND", 9090: "RAYCHAT_PROMETHEUS_BIND",
             3000: "RAYCHAT_GRAFANA_BIND"}


def published(env: dict[str, str]) -> dict[int, str]:
    """{container port: host IP it is published on} over every compose service, with `env` set."""
    out = {}
    for svc in interpolate(load_yaml(COMPOSE), env)["services"].values():
        for spec in svc.get("ports", []):
            ip, _, container = parse_port(spec)
            out[container] = ip
    return out


def test_compose_publishes_only_what_is_asked_for_by_name():
    assert published({}) == dict.fromkeys(BIND_VARS, "127.0.0.1")
    # the one documented knob for "serve users": the chat port only, never the dashboard/Prometheus/Grafana
    assert published({"RAYCHAT_BIND": "0.0.0.0"}) == {8000: "0.0.0.0", 8265: "127.0.0.1", 9090: "127.0.0.1",
                                                      3000: "127.0.0.1"}
    for port, var in BIND_VARS.items():
        got = published({var: "10.1.2.3"})
        assert got[port] == "10.1.2.3" and all(ip == "127.0.0.1" for p, ip in got.items() if p != port), var


def test_grafana_has_no_default_admin_password():
    graf = interpolate(load_yaml(COMPOSE), {})["services"]["grafana"]
    env = graf["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env and env["GRAFANA_ADMIN_PASSWORD"] == ""
    script = graf["entrypoint"][-1]
    src = next(v.split(":")[0] for v in graf["volumes"] if v.split(":")[1] == script)
    assert (COMPOSE.parent / src).resolve() == DEPLOY / "grafana" / "start.sh"
    given = interpolate(load_yaml(COMPOSE), {"GRAFANA_ADMIN_PASSWORD": "s3cret"})["services"]["grafana"]
    assert given["environment"]["GRAFANA_ADMIN_PASSWORD"] == "s3cret"


def _start_grafana(tmp_path, **env) -> str:
    """Run deploy/grafana/start.sh with a fake Grafana that prints the password it was given."""
    fake = tmp_path / "run.sh"
    fake.write_text('#!/bin/sh\nprintf "%s" "$GF_SECURITY_ADMIN_PASSWORD"\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "GRAFANA_RUN": str(fake), "GRAFANA_PASSWORD_FILE": str(tmp_path / "pw"),
           **env}
    r = subprocess.run(["sh", str(DEPLOY / "grafana" / "start.sh")], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_grafana_start_generates_a_password_once_or_uses_the_given_one(tmp_path):
    first = _start_grafana(tmp_path)
    assert len(first) >= 32 and first.isalnum() and first != "admin"
    assert stat.S_IMODE(os.stat(tmp_path / "pw").st_mode) == 0o600
    assert _start_grafana(tmp_path) == first                  # kept in the data volume across restarts
    assert _start_grafana(tmp_path, GRAFANA_ADMIN_PASSWORD="s3cret") == "s3cret"
    other = tmp_path / "other"
    other.mkdir()
    assert _start_grafana(other) != first                     # random, not a constant


def test_ray_cluster_dashboard_stays_on_loopback():
    cfg = load_yaml(DEPLOY / "ray-cluster.yaml")
    (start,) = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    # compose's head binds the dashboard inside its own network namespace (published on loopback, above)
    assert "network_mode" not in interpolate(load_yaml(COMPOSE), {})["services"]["head"]


# NetworkPolicy semantics (networking.k8s.io/v1), for one policy: a pod it selects admits a connection iff some
# ingress rule matches both the source (no `from` = any source; a peer with both selectors needs both) and the port
# (no `ports` = every port). Selectors here are matchLabels only ({} = everything).


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict, src: dict, same_namespace: bool) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}, peer
    if "namespaceSelector" in peer:
        ns_ok = _matches(peer["namespaceSelector"], src["ns_labels"])
    else:
        ns_ok = same_namespace                    # a podSelector alone means the policy's own namespace
    return ns_ok and _matches(peer.get("podSelector", {}), src["labels"])


def admits(policy: dict, src: dict, port: int, same_namespace: bool = True) -> bool:
    for rule in policy["spec"]["ingress"]:
        if "from" in rule and not any(_peer_admits(p, src, same_namespace) for p in rule["from"]):
            continue
        if "ports" in rule and not any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule["ports"]):
            continue
        return True
    return False


RAY_POD = {"labels": {"ray.io/is-ray-node": "yes", "ray.io/node-type": "worker"}, "ns_labels": {}}
STRANGER = {"labels": {"app": "web"}, "ns_labels": {"kubernetes.io/metadata.name": "default"}}
OPERATOR = {"labels": {"app.kubernetes.io/name": "kuberay-operator"},
            "ns_labels": {"kubernetes.io/metadata.name": "kuberay"}}
SUBMITTER = {"labels": {"ray.io/originated-from-crd": "RayJob", "ray.io/originated-from-cr-name": "raychat-speedrun"},
             "ns_labels": {}}
PROMETHEUS = {"labels": {"app.kubernetes.io/name": "prometheus"},
              "ns_labels": {"kubernetes.io/metadata.name": "monitoring"}}


@pytest.fixture(scope="module")
def policy() -> dict:
    (doc,) = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "networkpolicy.yaml").read_text()) if d]
    assert doc["apiVersion"] == "networking.k8s.io/v1" and doc["kind"] == "NetworkPolicy"
    assert doc["spec"]["policyTypes"] == ["Ingress"]
    return doc


def test_network_policy_selects_the_ray_pods(policy):
    assert _matches(policy["spec"]["podSelector"], RAY_POD["labels"])       # KubeRay's label on every Ray pod
    assert _matches(policy["spec"]["podSelector"], {"ray.io/is-ray-node": "yes", "ray.io/node-type": "head"})


@pytest.mark.parametrize("src,port,same_ns,allowed", [
    (STRANGER, 8000, False, True),             # the chat port, from anywhere
    (STRANGER, 8265, True, False),             # job submission: never from an arbitrary pod
    (STRANGER, 6379, True, False), (STRANGER, 10001, True, False), (STRANGER, 8080, True, False),
    (STRANGER, 52365, True, False),
    (RAY_POD, 6379, True, True), (RAY_POD, 40123, True, True),      # Ray nodes among themselves: every port
    (RAY_POD, 6379, False, False),             # ... but not Ray pods of another namespace
    (OPERATOR, 8265, False, True), (OPERATOR, 52365, False, True), (OPERATOR, 6379, False, False),
    (SUBMITTER, 8265, True, True), (SUBMITTER, 6379, True, False), (SUBMITTER, 8265, False, False),
    (PROMETHEUS, 8080, False, True), (PROMETHEUS, 9101, False, True), (PROMETHEUS, 8265, False, False),
])
def test_network_policy_admits_only_what_it_should(policy, src, port, same_ns, allowed):
    assert admits(policy, src, port, same_namespace=same_ns) is allowed


def test_network_policy_covers_every_port_the_manifests_open(policy):
    """Each containerPort in the KubeRay manifests is either the chat port or closed to strangers."""
    ports = set()
    for name in ("rayjob-pretrain.yaml", "rayservice.yaml"):
        text = (DEPLOY / "k8s" / name).read_text()
        for doc in yaml.safe_load_all(text):
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    if "containerPort" in node:
                        ports.add(node["containerPort"])
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
    assert {8000, 8265, 6379} <= ports
    assert {p for p in ports if admits(policy, STRANGER, p, same_namespace=False)} == {8000}
