# syntax=docker/dockerfile:1
# raychat on a GPU box: one image for training (Ray Train jobs), serving (Ray Serve) and one-off commands.
#
#   docker build -t raychat:latest --build-arg RAYCHAT_COMMIT="$(git rev-parse HEAD)" .
#   docker run --rm --gpus all --shm-size=16g raychat:latest selftest        # prove the GPU paths first
#   docker compose -f deploy/compose.yaml up -d                              # Ray head + Serve + Prometheus + Grafana
#
# Two stages. `build` has nvcc (cudnn-devel) because flash-attn compiles its kernels from source against the
# installed torch; `runtime` copies the finished venv into the smaller cudnn-runtime image. The venv is an
# editable install (deploy/install.sh does `pip install -e`), so source and venv keep the same paths in both.
#
# CUDA_VERSION must have the same major version as the CUDA build of the pinned torch (torch 2.13.0 on PyPI is
# CUDA 13.0: its wheel requires cuda-toolkit==13.0.3). flash-attn refuses to build with a different nvcc
# major, and the host driver must support it (CUDA 13 needs driver >= 580).
ARG CUDA_VERSION=13.0.2
# Ubuntu 22.04 because its archive has python3.11, the interpreter dev and CI use (24.04 has only 3.12).
ARG UBUNTU_VERSION=22.04

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS build

# flash-attn build knobs: parallel compile jobs (each needs several GB of RAM) and the GPU architectures to
# compile for (80 = A100, 90 = H100/H200; add 100/120 for Blackwell). Fewer archs = a much shorter build.
ARG MAX_JOBS=8
ARG FLASH_ATTN_CUDA_ARCHS="80;90"
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAYCHAT_VENV=/opt/raychat/venv \
    MAX_JOBS=${MAX_JOBS} \
    FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS}

# Ubuntu 22.04 ships Python 3.11 as python3.11 (the dev/CI interpreter); python3 stays 3.10 for apt's sake.
# Versions are not pinned: the CUDA base image's tag already fixes the distribution snapshot we build on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential ninja-build git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/raychat/src
COPY . .
# The ONE install script (README, CI and this image share it). The venv is created first with python3.11 so
# install.sh reuses it instead of making one with the distribution's python3 (3.10). The pip cache mount
# keeps the compiled flash-attn wheel across rebuilds (its compile is the slow part of this build).
RUN --mount=type=cache,target=/root/.cache/pip \
    python3.11 -m venv "$RAYCHAT_VENV" \
    && bash deploy/install.sh gpu \
    && "$RAYCHAT_VENV/bin/python" -c "import raychat.cli, ray, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__)"


FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS runtime

# Provenance: jobs record the code version; there is no .git inside the image, so pass it in at build time.
ARG RAYCHAT_COMMIT=unknown
ARG DEBIAN_FRONTEND=noninteractive
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/raychat/venv/bin:${PATH} \
    HF_HOME=/home/raychat/.cache/huggingface \
    RAYCHAT_COMMIT=${RAYCHAT_COMMIT} \
    RAYCHAT_METRICS_PORT=9101 \
    RAY_USAGE_STATS_ENABLED=0

# Runtime needs beyond Python: gcc + Python headers because Triton (torch.compile) compiles a small launcher
# module at run time; curl for the health check; rsync + openssh-client because the Ray cluster launcher
# (deploy/ray-cluster.yaml) syncs files into, and ssh-es out of, the head container.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-dev gcc libc6-dev curl ca-certificates rsync openssh-client procps bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# Non-root user. The directories that compose/Kubernetes mount volumes on exist here, owned by the user, so a
# fresh named volume inherits that ownership: run dirs and datasets (~/.cache/raychat: runs/, data/), HF_HOME
# (Hub token, Xet cache), Ray's temp dir (shared read-only with Prometheus/Grafana for service discovery and
# Ray's own dashboards). Ray Train's
# storage_path is <run dir>/ray, so a run dir on shared storage is all a multi-node cluster needs. The
# profile.d line keeps the venv on PATH in login shells (`bash -l`, which KubeRay uses to start Ray in pods).
# hadolint ignore=SC2016
RUN useradd --create-home --uid 1000 --shell /bin/bash raychat \
    && mkdir -p /home/raychat/.cache/raychat /home/raychat/.cache/huggingface \
        /tmp/ray/grafana-dashboards \
    && chown -R raychat:raychat /home/raychat /tmp/ray \
    && echo 'export PATH=/opt/raychat/venv/bin:$PATH' > /etc/profile.d/raychat-venv.sh

COPY --from=build /opt/raychat /opt/raychat

USER 1000:1000
WORKDIR /home/raychat

# 8000: Serve app (chat page, WebSocket, OpenAI API, /health, /metrics). 8265: Ray dashboard + job submission.
# 6379: Ray GCS (workers join here). 8080: Ray metrics export. 9101: training job metrics (RAYCHAT_METRICS_PORT).
EXPOSE 8000 8265 6379 8080 9101

# Health = whatever this container is running answers: the Serve app's /health if it listens on 8000, the Ray
# GCS health endpoint if a Ray head listens on 8265; a container running a one-off command has no server and
# is healthy while its process lives. Not `raychat selftest`: it allocates GPU memory and compute every
# interval next to a training job that owns those GPUs, takes tens of seconds, and a GPU fault is not
# something a restart fixes. Run the self-test once, at install time (see README).
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["/opt/raychat/src/deploy/healthcheck.sh"]

# `raychat` is the entry point: `docker run IMAGE speedrun --preset gpt2_8xh100` runs `raychat speedrun ...`.
# The wrapper also runs other programs (`ray start`, `bash`) unchanged: Ray's cluster launcher starts the
# container as `docker run IMAGE bash`, and compose starts the Ray head through a script.
ENTRYPOINT ["/opt/raychat/src/deploy/entrypoint.sh"]
CMD ["--help"]
