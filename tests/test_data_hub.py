"""Every dataset by download, from a local stand-in for the Hugging Face Hub (tests/hub_server.py), with no
../shared beside the checkout: the registry, `raychat data download`, and the smoke speedrun end to end."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hub_server import MIRROR_REPO, HubServer, build_bundle

from raychat.common import REPO_ROOT, RaychatError, shared_data_dir
from raychat.data import registry
from raychat.data.download import DownloadError, fetch_hub_file
from raychat.tasks import ARC, GSM8K, MMLU, HumanEval, SmolTalk, SpellingBee, eval_task

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    shared = shared_data_dir()
    assert shared is not None, "the hub bundle is built from slices of ../shared/data"
    return build_bundle(shared, tmp_path_factory.mktemp("hub"))


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """A data folder in tmp, no shared development copy, fast retries."""
    monkeypatch.setenv("RAYCHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAYCHAT_SHARED_DATA", str(tmp_path / "no-shared"))
    monkeypatch.setenv("RAYCHAT_DATA_REPO", MIRROR_REPO)
    monkeypatch.setenv("RAYCHAT_DOWNLOAD_BACKOFF", "0.01")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return tmp_path / "data"


def _serve(bundle, monkeypatch, faults=False):
    srv = HubServer(bundle, faults=faults).start()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    return srv


def test_missing_dataset_names_the_command(hub_env):
    with pytest.raises(registry.MissingDataError, match=r"dataset arc \(ARC-Easy/test\) is not downloaded: run "
                       r"`raychat data download arc`"):
        ARC("ARC-Easy", "test")
    with pytest.raises(registry.MissingDataError, match="raychat data download climbmix"):
        registry.shard_dir("climbmix")
    assert registry.missing(["arc", "climbmix", "words"]) == ["arc", "climbmix"]   # words: the packaged list
    assert len(SpellingBee().words) == 5008


def test_every_dataset_downloads_and_loads(bundle, hub_env, monkeypatch):
    srv = _serve(bundle, monkeypatch)
    try:
        for name in registry.DATASETS:
            registry.download(name, num_shards=2, progress=False)
        assert registry.missing(list(registry.DATASETS), dev_default=False, num_shards=2) == []
        # each file is byte-identical to the served one (sha256 = the ETag the server sent)
        for name, ds in registry.DATASETS.items():
            for src in ds.files.values():
                if src.repo:
                    served = bundle / "datasets" / src.repo / src.path
                    assert (hub_env / name / src.path).read_bytes() == served.read_bytes()
        # the loaders read the Hub's parquet layout
        assert len(ARC("ARC-Challenge", "validation")) == 60 and len(eval_task("ARC-Easy")) == 60
        assert ARC("ARC-Easy", "train")[0]["messages"][1]["content"] in "ABCD"
        assert len(MMLU("auxiliary_train")) == 60 and MMLU("test")[0]["letters"] == ["A", "B", "C", "D"]
        assert len(GSM8K("test")) == 60 and len(HumanEval()) == 20
        assert len(SmolTalk("train")) == 60 and SmolTalk("test").num_dropped == 0
        words = SpellingBee().words                        # the downloaded list, not the packaged one
        assert "zyzzyva" in words and len(words) == 5009
        assert (registry.shard_dir("climbmix") / "shard_06542.parquet").is_file()
        assert (hub_env / "eval_bundle" / "core.yaml").is_file()
        from raychat.commands.tok_eval import samples  # tok-eval's chat and math samples from the Hub's parquet

        texts = samples(registry.shard_dir("climbmix"), 5000)
        assert len(texts["chat"]) == 5000 and len(texts["math"]) == 5000
        n = len(srv.requests)
        for name in registry.DATASETS:                     # second time: nothing to fetch, no request at all
            assert registry.download(name, num_shards=2, progress=False)["downloaded"] == 0
        assert len(srv.requests) == n
    finally:
        srv.stop()


def test_faulty_server_still_delivers_verified_files(bundle, hub_env, monkeypatch):
    import huggingface_hub.constants as c

    # huggingface_hub resumes from the last whole chunk it read (10 MB); small chunks let a small file resume
    monkeypatch.setattr(c, "DOWNLOAD_CHUNK_SIZE", 4096)
    srv = _serve(bundle, monkeypatch, faults=True)
    try:
        registry.download("climbmix", num_shards=1, progress=False)
        registry.download("eval_bundle", progress=False)
    finally:
        srv.stop()
    shard = "shard_00000.parquet"
    assert (hub_env / "climbmix" / shard).read_bytes() == (bundle / "datasets/karpathy/climbmix-400b-shuffle" /
                                                          shard).read_bytes()
    # 503, truncated body, dropped connection, flipped bytes (caught by the sha256 check), then the real file
    assert srv.counts[("GET", shard)] == 5 and srv.counts[("HEAD", shard)] >= 2
    assert any(m == "GET" and p.endswith(shard) and r.startswith("bytes=") for m, p, r in srv.requests)  # resumed
    assert (hub_env / "eval_bundle" / "core.yaml").is_file()
    assert not (hub_env / ".eval_bundle.download").exists()


def test_concurrent_fetchers_download_each_file_once(bundle, hub_env, monkeypatch):
    srv = _serve(bundle, monkeypatch)
    errors = []

    def fetch():
        try:
            fetch_hub_file("openai/gsm8k", "main/train-00000-of-00001.parquet", hub_env / "gsm8k", what="gsm8k")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    try:
        threads = [threading.Thread(target=fetch) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        srv.stop()
    assert not errors
    assert srv.counts[("GET", "main/train-00000-of-00001.parquet")] == 1


def test_errors_name_dataset_and_url(bundle, hub_env, monkeypatch):
    srv = _serve(bundle, monkeypatch)
    try:
        with pytest.raises(DownloadError, match=r"dataset 'arc' file ARC-Easy/nope.parquet not available at "
                           rf"{srv.url}/datasets/allenai/ai2_arc/resolve/main/ARC-Easy/nope.parquet"):
            fetch_hub_file("allenai/ai2_arc", "ARC-Easy/nope.parquet", hub_env / "arc", what="arc")
        with pytest.raises(DownloadError, match="not available at"):
            fetch_hub_file("nobody/nothing", "x.parquet", hub_env / "x", what="x")
    finally:
        srv.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set"):
        registry.download("gsm8k", progress=False)
    monkeypatch.delenv("RAYCHAT_DATA_REPO")                   # a plain-URL file: offline refuses it too
    with pytest.raises(DownloadError, match=r"dataset 'words' is not on disk .* HF_HUB_OFFLINE is set"):
        registry.download("words", progress=False)
    with pytest.raises(RaychatError, match="unknown dataset"):
        registry.get("c4")
    with pytest.raises(RaychatError, match="--num-shards must be 1..6542"):
        registry.shard_indices(registry.get("climbmix"), 0)


def test_data_download_for_preset_cli(bundle, hub_env, monkeypatch, capsys):
    from raychat.cli import main

    srv = _serve(bundle, monkeypatch)
    try:
        assert main(["data", "download", "--for", "smoke"]) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    assert "preset smoke needs: eval_bundle, words, arc, climbmix" in out
    # exactly those: the packaged word list covers SpellingBee, nothing else was fetched
    assert sorted(p.name for p in hub_env.iterdir() if not p.name.startswith(".")) == ["arc", "climbmix",
                                                                                          "eval_bundle"]
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "arc          downloaded" in listing and "smoltalk     missing" in listing
    assert main(["data", "download"]) == 2                      # neither names nor --for: one-line error


def _speedrun_env(tmp_path, url) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYCHAT_", "HF_", "RAY_ADDRESS"))}
    env.update(HOME=str(tmp_path / "home"), HF_ENDPOINT=url, RAYCHAT_DATA_REPO=MIRROR_REPO,
               RAYCHAT_SHARED_DATA=str(tmp_path / "no-shared"), RAYCHAT_DOWNLOAD_BACKOFF="0.01",
               RAYCHAT_DOWNLOAD_ATTEMPTS="5", HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=f"{REPO_ROOT / 'libs'}{os.pathsep}{REPO_ROOT / 'services'}")
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    return env


def _speedrun(tmp_path, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "raychat.cli", "speedrun", "--preset", "smoke", "--no-ray"],
                          cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_speedrun_from_a_faulty_hub_without_shared(bundle, tmp_path):
    srv = HubServer(bundle, faults=True).start()
    try:
        r = _speedrun(tmp_path, _speedrun_env(tmp_path, srv.url))
    finally:
        srv.stop()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "home" / ".cache" / "raychat" / "runs" / "smoke"
    data = tmp_path / "home" / ".cache" / "raychat" / "data"
    assert (run / "report.md").is_file()
    assert "[speedrun] ===== data =====" in r.stdout.splitlines()[1] or "===== data =====" in r.stdout
    assert r.stdout.index("===== data =====") < r.stdout.index("===== tokenizer =====")
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith(".")) == ["arc", "climbmix", "eval_bundle"]
    assert any(c >= 5 for (m, _), c in srv.counts.items() if m == "GET")   # the faults were served


@pytest.mark.slow
def test_smoke_speedrun_with_the_hub_gone(bundle, tmp_path):
    srv = HubServer(bundle).start()
    url = srv.url
    srv.stop()
    r = _speedrun(tmp_path, _speedrun_env(tmp_path, url), timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("raychat: error:") and "dataset 'eval_bundle'" in err
    assert f"{url}/datasets/{MIRROR_REPO}/resolve/main/eval_bundle/eval_bundle.zip" in err
    assert "===== tokenizer =====" not in r.stdout
    data = tmp_path / "home" / ".cache" / "raychat" / "data"
    files = [p for p in data.rglob("*") if p.is_file() and ".cache" not in p.parts]
    assert files == [], files   # no partial file where a complete one is expected


def test_background_download_and_stage_needs(bundle, hub_env, monkeypatch):
    srv = _serve(bundle, monkeypatch)
    try:
        bg = registry.Background(["climbmix"], num_shards=2, progress=False, log=lambda *a: None)
        bg.wait()
    finally:
        srv.stop()
    assert [p.name for p in sorted((hub_env / "climbmix").glob("*.parquet"))] == [
        "shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    bg = registry.Background(["fineweb-edu"], num_shards=1, progress=False, log=lambda *a: None)
    with pytest.raises(DownloadError, match="fineweb-edu"):   # the server is gone: the waiting stage gets the error
        bg.wait()
    # which datasets each stage reads
    assert registry.datasets_for(["tokenizer", "pretrain"]) == ["climbmix"]
    assert registry.datasets_for(["chat_eval"], chat_tasks=["ARC-Easy", "MMLU", "SimpleArithmetic"]) == ["arc", "mmlu"]
    assert registry.datasets_for(["sft"], sft_mixture=["default"]) == ["smoltalk", "mmlu", "gsm8k", "words"]
    assert registry.datasets_for(["base_eval", "rl"]) == ["eval_bundle", "gsm8k", "climbmix"]


# ---- the training stages resolve their default data through the registry ----------------------------------------
@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A tokenizer and random-init base + sft checkpoints whose context holds a GSM8K prompt."""
    from conftest import make_tiny_run_dir

    return make_tiny_run_dir(tmp_path_factory.mktemp("long_run"), seq_len=512, stages=("base", "sft"))


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_stages_without_data_stop_in_the_driver_naming_the_download(hub_env, long_run, tmp_path, monkeypatch,
                                                                     capsys):
    """No ../shared, nothing downloaded (the hub is gone): SFT's default mixture, GRPO on GSM8K and pretraining
    fail in preflight, before Ray is asked for a worker, with the command that fetches what is missing."""
    import raychat.train.ray_job as ray_job
    from raychat.cli import main

    def no_workers(*a, **k):
        raise AssertionError("a worker group was started")

    monkeypatch.setattr(ray_job, "run_job", no_workers)
    run = _copy_run(long_run, tmp_path / "run")
    assert main(["sft", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raychat: error: ") and "Traceback" not in err
    assert "run `raychat data download smoltalk mmlu gsm8k arc`" in err, err   # arc: the final chat eval
    assert main(["sft", "--run-dir", str(run), "--mixture", "GSM8K,SpellingBee", "--chat-eval-tasks", ""]) == 2
    assert "run `raychat data download gsm8k`" in capsys.readouterr().err
    # the quick chat eval at the end of SFT is checked too: hours of training must not end on a missing test set
    assert main(["sft", "--run-dir", str(run), "--mixture", "SimpleArithmetic", "--chat-eval-tasks",
                 "ARC-Easy,SimpleArithmetic"]) == 2
    assert "run `raychat data download arc`" in capsys.readouterr().err
    assert main(["rl", "--run-dir", str(run), "--task", "GSM8K"]) == 2
    assert "run `raychat data download gsm8k`" in capsys.readouterr().err
    assert main(["pretrain", "--run-dir", str(run), "--preset", "tiny_cpu"]) == 2
    assert "run `raychat data download climbmix`" in capsys.readouterr().err
    assert not hub_env.exists() or not any(p.is_file() for p in hub_env.rglob("*"))   # nothing fetched or written


def test_sft_default_mixture_and_grpo_gsm8k_from_the_hub(bundle, hub_env, long_run, tmp_path, monkeypatch):
    """With ../shared hidden and the datasets downloaded from the local hub, SFT trains on the default mixture
    (SmolTalk, MMLU auxiliary_train, GSM8K train, spelling) and GRPO on GSM8K, no --data-dir anywhere."""
    from raychat.cli import main
    from raychat.train.config import GRPOConfig, SFTConfig
    from raychat.train.harness import launch

    srv = _serve(bundle, monkeypatch)
    try:
        assert main(["data", "download", "smoltalk", "mmlu", "gsm8k"]) == 0
    finally:
        srv.stop()                      # the stages read the data folder only
    run = _copy_run(long_run, tmp_path / "run")
    launch("sft", SFTConfig(run_dir=str(run), synthetic_size=8, num_val_examples=8, device_batch_size=2,
                            total_batch_rows=2, num_iterations=2, eval_every=-1, chat_eval_tasks="GSM8K",
                            chat_eval_max_problems=2, chat_eval_max_tokens=4, num_threads=1, metrics_port=0),
           no_ray=True)
    meta = json.loads((run / "checkpoints" / "sft" / "step_000002" / "meta.json").read_text())
    # 60 SmolTalk + 60 MMLU auxiliary_train + 60 GSM8K train rows (the hub's slices) + 8 + 8 spelling + 2 x 2 identity
    assert meta["plan"]["num_train_conversations"] + meta["plan"]["num_val_conversations"] == 200
    assert meta["chat_eval"]["GSM8K"]["num_total"] == 2
    out = launch("rl", GRPOConfig(run_dir=str(run), task="GSM8K", prompts_per_step=2, group_size=2, max_new_tokens=4,
                                  rollout_batch_size=4, device_batch_size=4, num_iterations=1, eval_examples=2,
                                  eval_k=1, num_threads=1, metrics_port=0), no_ray=True)
    assert out["step"] == 1 and [e["eval_problems"] for e in out["evals"]] == [2, 2]
    assert meta["source_checkpoint"].endswith("base/step_000001")


def test_data_for_the_gpu_preset_is_what_its_stages_read(bundle, hub_env, monkeypatch, capsys):
    """`raychat data download --for gpt2_8xh100` (the README's data step) fetches what the GPU speedrun's stages
    read: afterwards, with the hub gone and no ../shared, each stage's own loaders find their data."""
    from raychat.cli import main
    from raychat.commands.speedrun import PRESETS
    from raychat.evals.bundle import find_eval_bundle
    from raychat.train.config import get_preset
    from raychat.train.grpo import build_tasks
    from raychat.train.sft import build_mixture

    srv = _serve(bundle, monkeypatch)
    try:
        assert main(["data", "download", "--for", "gpt2_8xh100", "--num-shards", "1"]) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    assert "preset gpt2_8xh100 needs: eval_bundle, smoltalk, mmlu, gsm8k, words, arc, humaneval, climbmix " \
           "(1 pretraining shard(s) + validation)" in out
    sft = get_preset("gpt2_8xh100", "sft").replace(synthetic_size=8)
    assert sft.mixture == "default"
    # SmolTalk (4 train files), MMLU auxiliary_train, GSM8K train, the downloaded word list: 60 + 60 + 60 rows
    parts = build_mixture(sft).tasks
    assert {type(t).__name__ for t in parts} >= {"SmolTalk", "MMLU", "GSM8K", "SpellingBee"}
    assert [type(t).__name__ for t in parts].count("MMLU") == 1   # auxiliary_train, not the dev+validation stand-in
    assert sum(len(t) for t in parts if type(t).__name__ in ("SmolTalk", "MMLU", "GSM8K")) == 180
    assert "zyzzyva" in SpellingBee().words               # the downloaded list, not the packaged fallback
    chat_tasks = {*PRESETS["gpt2_8xh100"].chat_tasks.split(","), *sft.chat_eval_tasks.split(",")}
    assert {"HumanEval", "MMLU", "ARC-Challenge", "GSM8K"} <= chat_tasks
    assert all(len(eval_task(t)) > 0 for t in chat_tasks)
    train, test = build_tasks(get_preset("gpt2_8xh100", "rl"))
    assert len(train) == len(test) == 60
    assert (find_eval_bundle() / "core.yaml").is_file() and find_eval_bundle().parent == hub_env
    assert (registry.shard_dir("climbmix", dev_default=False) / "shard_00000.parquet").is_file()


def test_base_eval_reads_the_downloaded_shards_for_bpb(bundle, hub_env, long_run, tmp_path, monkeypatch, capsys):
    """`raychat eval base` without --data-dir measures val bpb on the registry's shards (not ./pretrain of the
    working directory); with none downloaded it says how to get them instead of skipping silently."""
    from raychat.cli import main

    run = _copy_run(long_run, tmp_path / "run")
    srv = _serve(bundle, monkeypatch)
    try:
        assert main(["data", "download", "eval_bundle"]) == 0
        argv = ["eval", "base", "--run-dir", str(run), "--tasks", "jeopardy", "--max-per-task", "2",
                "--bpb-tokens", "1024"]
        assert main(argv) == 0
        assert "val_bpb" not in json.loads((run / "evals" / "base.json").read_text())
        assert "val bpb skipped: dataset climbmix is not downloaded: run `raychat data download climbmix`" \
            in capsys.readouterr().out
        assert main(["data", "download", "climbmix", "--num-shards", "1"]) == 0
    finally:
        srv.stop()
    assert main(argv) == 0
    assert json.loads((run / "evals" / "base.json").read_text())["val_bpb"] > 0


def test_each_preset_downloads_what_its_stage_preflights_require():
    """`data download --for P` (registry.datasets_for) and the stages' preflight checks (tasks.data_needs) name
    datasets from two tables; for every speedrun preset the second must be covered by the first."""
    from raychat.commands.data import preset_needs
    from raychat.commands.speedrun import PRESETS
    from raychat.tasks.mixtures import data_needs
    from raychat.train.config import get_preset, parse_mixture

    for name, p in PRESETS.items():
        sft = get_preset(p.model, "sft").replace(**p.overrides.get("sft", {}))
        rl = get_preset(p.model, "rl").replace(**p.overrides.get("rl", {}))
        evals = [*p.chat_tasks.split(","), *sft.chat_eval_tasks.split(","), *(["GSM8K"] if p.rl else [])]
        read = data_needs(sft_parts=[m for m, _ in parse_mixture(sft.mixture)], eval_tasks=evals,
                          rl_tasks=[rl.task] if p.rl else [])
        assert {d for d, _ in read} <= set(preset_needs(name)[0]), name
