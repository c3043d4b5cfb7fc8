"""The way users submit training: a Ray head started with `ray start --head` (dashboard on loopback, so the job
server answers), the smoke speedrun submitted with `ray job submit --address ... --no-wait -- raychat speedrun ...`
as README shows, then `ray job status` until SUCCEEDED, the report in the run directory and the stage banners in
`ray job logs`. Data comes from the local hub stand-in (no ../shared): the job inherits the head's environment.

The head is stopped by killing its process group (it was started in a session of its own), not with `ray stop`,
which stops every Ray process of the user on the machine, other test runs' included."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hub_server import MIRROR_REPO, HubServer, build_bundle

from raychat.common import REPO_ROOT, shared_data_dir

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_ray_job_submit_smoke_speedrun(tmp_path):
    shared = shared_data_dir()
    assert shared is not None, "the hub bundle is built from slices of ../shared/data"
    hub = HubServer(build_bundle(shared, tmp_path / "hub")).start()
    gcs, dash, client, nm, om, agent, agent_grpc, renv, metrics = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYCHAT_", "HF_", "RAY_"))}
    env.update(HOME=str(tmp_path / "home"), HF_ENDPOINT=hub.url, RAYCHAT_DATA_REPO=MIRROR_REPO,
               RAYCHAT_SHARED_DATA=str(tmp_path / "no-shared"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=f"{REPO_ROOT / 'libs'}{os.pathsep}{REPO_ROOT / 'services'}")
    (tmp_path / "home").mkdir()
    address = f"http://127.0.0.1:{dash}"
    ray_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")   # Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
         "--ray-client-server-port", str(client), "--node-manager-port", str(nm), "--object-manager-port", str(om),
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--runtime-env-agent-port", str(renv), "--metrics-export-port", str(metrics), "--num-cpus", "2",
         "--object-store-memory", str(200 * 1024**2), "--temp-dir", ray_tmp,
         "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    run = tmp_path / "runs" / "smoke"
    try:
        def ray(*args, timeout=120):
            return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)

        deadline = time.time() + 180
        while True:   # the job server answers once the dashboard is up
            r = ray("job", "list", "--address", address, timeout=60)
            if r.returncode == 0:
                break
            assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(2)
        r = ray("job", "submit", "--address", address, "--no-wait", "--", "raychat", "speedrun", "--preset",
                "smoke", "--run-dir", str(run))
        assert r.returncode == 0, r.stdout + r.stderr
        job_id = re.search(r"raysubmit_\w+", r.stdout + r.stderr).group(0)
        deadline = time.time() + 900
        while True:
            r = ray("job", "status", "--address", address, job_id)
            status = r.stdout + r.stderr    # the CLI logs "Job '...' succeeded" to stderr
            if re.search(r"\b(succeeded|failed|stopped)\b", status, re.I) or time.time() > deadline:
                break
            time.sleep(5)
        logs = ray("job", "logs", "--address", address, job_id).stdout
        assert re.search(r"Job '\w+' succeeded", status), status + logs[-4000:]
        assert (run / "report.md").is_file()
        for stage in ("data", "tokenizer", "pretrain", "base_eval", "sft", "chat_eval", "report"):
            assert f"[speedrun] ===== {stage} =====" in logs, stage
        assert "[speedrun] finished in" in logs
    finally:
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):   # the head's process group: gcs,
            try:                                                            # raylet, dashboard, workers
                os.killpg(head.pid, sig)
                time.sleep(grace)      # the group outlives `ray start` itself: give every member its time
            except ProcessLookupError:
                break
        head.wait(timeout=10)
        hub.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
