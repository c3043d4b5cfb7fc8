"""Every dataset raychat uses, in one place: where it comes from, where it lives on this node, which stage needs it.

    resolve("arc", "ARC-Easy/test")   -> the local file (downloaded, else the development default), or an error
                                         that names the command which fetches it
    shard_dir("climbmix")             -> a directory of pretraining shards (the last one is validation)
    ensure(datasets_for(stages), ...) -> download whatever those stages need and is missing
    require([("gsm8k", "train"), ...])  -> in a stage's driver: every split it reads is here, else one error that
                                         names the download command

Where files live: `RAYCHAT_DATA_DIR`, else `$RAYCHAT_HOME/data` (RAYCHAT_HOME defaults to ~/.cache/raychat), one
folder per dataset holding the files under their Hub paths (e.g. `arc/ARC-Easy/test-00000-of-00001.parquet`).
A plain folder rather than the Hub's symlinked cache: stages list shard folders by name, a KubeRay pod mounts it
from a shared volume, and one `ls` shows what is there. The Hub's conventions still apply to the download
(`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_HOME`; see download.py).

Sources are the ones nanochat uses: Hub dataset repositories for the pretraining shards (karpathy/climbmix-400b-shuffle,
karpathy/fineweb-edu-100b-shuffle), SmolTalk (HuggingFaceTB/smol-smoltalk), MMLU (cais/mmlu), GSM8K (openai/gsm8k),
ARC (allenai/ai2_arc) and HumanEval (openai/openai_humaneval); plain URLs for the 22-task CORE bundle (a zip on S3),
nanochat's identity conversations (S3) and the dwyl English word list (GitHub). A mirror without those URLs can
serve them from a Hub dataset repository of its own: set `RAYCHAT_DATA_REPO=org/name` holding `<dataset>/<file>`.

Development default: when a dataset is not in the data folder, the repository's sibling `../shared/data` (or
`RAYCHAT_SHARED_DATA`) stands in where it has that data (Wikipedia shards for pretraining, 20 of the 22 CORE
tasks, small chat files instead of SmolTalk, ...). It is never required; `dev_default=False` ignores it (the GPU
presets do: a real run never trains on stand-ins). The spelling tasks' stand-in is the word list shipped with the
package (raychat/tasks/words.txt), so the CPU presets need no download for them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from raychat.common import RaychatError, shared_data_dir
from raychat.data.download import DownloadError, download_file, env_float, fetch_hub_file
from raychat.progress import Progress

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
PACKAGED_WORDS = Path(__file__).resolve().parents[1] / "tasks" / "words.txt"


@dataclass(frozen=True)
class Source:
    """One file: `path` inside Hub repository `repo` (repo_type dataset), or fetched from `url` and stored as `path`."""
    path: str
    repo: str | None = None
    url: str | None = None
    revision: str = "main"


@dataclass(frozen=True)
class Dataset:
    name: str
    about: str
    files: dict[str, Source] = field(default_factory=dict)   # key (split) -> source
    dev: dict[str, str] = field(default_factory=dict)        # key -> stand-in under ../shared/data (or absolute)
    shard_repo: str | None = None                            # pretraining shard sets: shard_00000..shard_<max>
    max_shard: int = 0                                       # the last shard: pinned as the validation split
    unpack: str | None = None                                # "zip": the file is an archive holding this marker


def _hub(repo: str, *paths: str, key=lambda p: p) -> dict[str, Source]:
    return {key(p): Source(p, repo=repo) for p in paths}


def _split_of(path: str) -> str:
    """'main/train-00000-of-00001.parquet' -> 'train'; 'ARC-Easy/test-0...' keeps its config: 'ARC-Easy/test';
    a split in several files numbers them: 'data/train-00001-of-00004.parquet' -> 'train:1'."""
    head, _, tail = path.rpartition("/")
    split, _, rest = tail.partition("-0")
    split = f"{head}/{split}" if head.startswith("ARC-") else split
    index, _, total = rest.removesuffix(".parquet").partition("-of-")
    return split if total.lstrip("0") == "1" else f"{split}:{int('0' + index)}"


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("climbmix", "NVIDIA ClimbMix 400B tokens in 6,543 parquet shards (nanochat's default pretraining text)",
            dev={"dir": "pretrain"}, shard_repo="karpathy/climbmix-400b-shuffle", max_shard=6542),
    Dataset("fineweb-edu", "FineWeb-Edu 100BT sample in 1,823 parquet shards (nanochat's earlier pretraining text)",
            dev={"dir": "pretrain"}, shard_repo="karpathy/fineweb-edu-100b-shuffle", max_shard=1822),
    Dataset("eval_bundle", "the CORE eval bundle: 22 in-context tasks (DCLM), ~160 MB zip",
            files={"zip": Source("eval_bundle.zip", url=EVAL_BUNDLE_URL)}, dev={"dir": "eval_bundle"},
            unpack="core.yaml"),
    Dataset("smoltalk", "SmolTalk (smol version): 460K general conversations for SFT, 24K test",
            files=_hub("HuggingFaceTB/smol-smoltalk", *(f"data/train-{i:05d}-of-00004.parquet" for i in range(4)),
                       "data/test-00000-of-00001.parquet", key=_split_of),
            dev={"train": "chat"}),
    Dataset("mmlu", "MMLU: 57 subjects of multiple choice; auxiliary_train (100K rows) for SFT, test for evals",
            files=_hub("cais/mmlu", *(f"all/{s}-00000-of-00001.parquet"
                                      for s in ("auxiliary_train", "dev", "validation", "test")), key=_split_of),
            dev={"dev": "tasks/mmlu/dev.jsonl", "validation": "tasks/mmlu/val.jsonl", "test": "tasks/mmlu/test.jsonl"}),
    Dataset("gsm8k", "GSM8K grade-school math with calculator annotations (train 7.5K, test 1.3K)",
            files=_hub("openai/gsm8k", "main/train-00000-of-00001.parquet", "main/test-00000-of-00001.parquet",
                       key=_split_of),
            dev={"train": "tasks/gsm8k/train.jsonl", "test": "tasks/gsm8k/test.jsonl"}),
    Dataset("arc", "AI2 ARC multiple choice, Easy and Challenge sets (train/validation/test)",
            files=_hub("allenai/ai2_arc", *(f"{c}/{s}-00000-of-00001.parquet" for c in ("ARC-Easy", "ARC-Challenge")
                                            for s in ("train", "validation", "test")), key=_split_of),
            dev={"ARC-Easy/test": "tasks/arc/ARC-Easy_test.jsonl",
                 "ARC-Challenge/test": "tasks/arc/ARC-Challenge_test.jsonl"}),
    Dataset("humaneval", "HumanEval: 164 Python functions graded by their unit tests",
            files=_hub("openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet", key=_split_of),
            dev={"test": "tasks/humaneval/HumanEval.jsonl.gz"}),
    Dataset("words", "the dwyl English word list (370K words) for the spelling tasks",
            files={"words": Source("words_alpha.txt",
                                   url="https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt")},
            dev={"words": str(PACKAGED_WORDS)}),
    Dataset("identity", "nanochat's identity conversations (JSONL; they name the model nanochat, so raychat's SFT "
            "mixture uses its own synthetic Identity task and this file only through --extra-jsonl)",
            files={"conversations": Source("identity_conversations.jsonl",
                                           url="https://karpathy-public.s3.us-west-2.amazonaws.com/"
                                               "identity_conversations.jsonl")}),
]}

# Which dataset each task name (chat evals, SFT mixture parts, RL tasks) reads.
TASK_DATASETS = {"ARC-Easy": "arc", "ARC-Challenge": "arc", "MMLU": "mmlu", "GSM8K": "gsm8k", "HumanEval": "humaneval",
                 "SpellingBee": "words", "SimpleSpelling": "words", "SmolTalk": "smoltalk"}
SFT_DEFAULT_DATASETS = ("smoltalk", "mmlu", "gsm8k", "words")


class MissingDataError(RaychatError):
    pass


def data_root() -> Path:
    env = os.environ.get("RAYCHAT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("RAYCHAT_HOME", Path.home() / ".cache" / "raychat")).expanduser() / "data"


def get(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise RaychatError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def shard_indices(ds: Dataset, num_shards: int) -> list[int]:
    """The pinned validation shard first (so a partial folder never mistakes a training shard for it), then
    training shards 0..num_shards-1 (-1 = all)."""
    if num_shards == -1:
        num_shards = ds.max_shard
    if not 1 <= num_shards <= ds.max_shard:
        raise RaychatError(f"--num-shards must be 1..{ds.max_shard} (or -1 for all) for {ds.name}, got {num_shards}")
    return [ds.max_shard, *range(num_shards)]


def _dev_path(ds: Dataset, key: str) -> Path | None:
    rel = ds.dev.get(key)
    if rel is None:
        return None
    if Path(rel).is_absolute():
        return Path(rel) if Path(rel).exists() else None
    base = shared_data_dir()
    return base / rel if base is not None and (base / rel).exists() else None


def _keys(ds: Dataset, key: str | None) -> str:
    if ds.shard_repo or ds.unpack:
        return "dir"
    if key is None:
        if len(ds.files) != 1:
            raise RaychatError(f"dataset {ds.name} has several files; ask for one of {', '.join(ds.files)}")
        return next(iter(ds.files))
    if key not in ds.files:
        raise RaychatError(f"dataset {ds.name} has no {key!r}; it has {', '.join(ds.files)}")
    return key


def local_path(name: str, key: str | None = None) -> Path | None:
    """The downloaded file (or folder, for shard sets and bundles) in the data folder, if it is complete."""
    ds = get(name)
    key = _keys(ds, key)
    folder = data_root() / name
    if ds.shard_repo:
        have = {p.name for p in folder.glob("shard_*.parquet")} if folder.is_dir() else set()
        return folder if shard_name(ds.max_shard) in have and len(have) >= 2 else None
    if ds.unpack:
        return folder if (folder / ds.unpack).is_file() else None
    p = folder / ds.files[key].path
    return p if p.is_file() else None


def resolve(name: str, key: str | None = None, dev_default: bool = True) -> Path:
    """The local file for (dataset, key): downloaded, else the development default; else MissingDataError."""
    ds = get(name)
    k = _keys(ds, key)
    p = local_path(name, key)
    if p is not None:
        return p
    dev = _dev_path(ds, k) if dev_default else None
    if dev is not None:
        return dev
    what = f"{name} ({k})" if k not in ("dir",) and len(ds.files) > 1 else name
    hint = " (no development copy in ../shared/data either)" if ds.dev and dev_default else ""
    raise MissingDataError(f"dataset {what} is not downloaded: run `raychat data download {name}` "
                           f"(looked in {data_root() / name}{hint})")


def split_files(name: str, split: str, dev_default: bool = True) -> list[Path]:
    """Every local file of one split (a split may span several files: SmolTalk's train is 4), else the
    development default for that split as one path, else MissingDataError."""
    ds = get(name)
    keys = [k for k in ds.files if k == split or k.startswith(split + ":")]
    if not keys:
        raise RaychatError(f"dataset {name} has no split {split!r}")
    local = [local_path(name, k) for k in keys]
    if all(p is not None for p in local):
        return local
    dev = _dev_path(ds, split) if dev_default else None
    if dev is not None:
        return [dev]
    raise MissingDataError(f"dataset {name} ({split}) is not downloaded: run `raychat data download {name}` "
                           f"(looked in {data_root() / name})")


def require(needs, dev_default: bool = True) -> None:
    """Every (dataset, split) of `needs` is here (split None: the dataset's one file, bundle or shard set), else
    one MissingDataError naming the single command that fetches everything missing. The training stages call it
    in the driver, before any worker starts: a run must not stop hours in on a test set that was never fetched."""
    absent: list[str] = []
    for name, split in needs:
        try:
            if split is None:
                resolve(name, dev_default=dev_default)
            else:
                split_files(name, split, dev_default=dev_default)
        except MissingDataError:
            absent += [name] if name not in absent else []
    if absent:
        raise MissingDataError(f"dataset(s) {', '.join(absent)} not downloaded: run `raychat data download "
                               f"{' '.join(absent)}` (data folder {data_root()}; or pass --data-dir)")


def shard_dir(name: str = "climbmix", dev_default: bool = True) -> Path:
    return resolve(name, dev_default=dev_default)


def datasets_for(stages, chat_tasks=(), sft_mixture=("default",), rl_tasks=("GSM8K",),
                 pretrain: str = "climbmix") -> list[str]:
    """The datasets a list of speedrun stages reads, in download order (pretraining shards last: they are the
    big ones and can continue in the background)."""
    need: list[str] = []

    def add(*names):
        need.extend(n for n in names if n not in need)

    stages = set(stages)
    if stages & {"base_eval"}:
        add("eval_bundle")
    if "sft" in stages:
        for part in sft_mixture:
            add(*(SFT_DEFAULT_DATASETS if part == "default" else [TASK_DATASETS[part]] if part in TASK_DATASETS
                  else []))
    if stages & {"chat_eval", "rl_eval"}:
        add(*(TASK_DATASETS[t] for t in chat_tasks if t in TASK_DATASETS))
    if "rl" in stages:
        add(*(TASK_DATASETS[t] for t in rl_tasks if t in TASK_DATASETS))
    if stages & {"tokenizer", "tokenizer_eval", "pretrain", "base_eval"}:
        add(pretrain)
    return need


def missing(names, dev_default: bool = True, num_shards: int = 1) -> list[str]:
    """Which of `names` are not here: not fully downloaded (a shard set: fewer than `num_shards` training shards
    or no validation shard) and, when `dev_default`, without any development copy (a dataset whose stand-in has
    only some splits counts as present: asking for another split then names the download command)."""
    out = []
    for name in names:
        ds = get(name)
        if dev_default and any(_dev_path(ds, k) is not None for k in ds.dev):
            continue
        if ds.shard_repo:
            folder = data_root() / name
            done = all((folder / shard_name(i)).is_file() for i in shard_indices(ds, num_shards))
        elif ds.unpack:
            done = local_path(name) is not None
        else:
            done = all(local_path(name, k) is not None for k in ds.files)
        if not done:
            out.append(name)
    return out


def _fetch(ds: Dataset, src: Source, folder: Path) -> Path:
    """One file of a dataset into `folder` (Hub, the RAYCHAT_DATA_REPO mirror for URL files, or the URL)."""
    if src.repo:
        return fetch_hub_file(src.repo, src.path, folder, revision=src.revision, what=ds.name)
    mirror = os.environ.get("RAYCHAT_DATA_REPO")
    if mirror:   # staged beside the data folders: huggingface_hub keeps its metadata next to what it fetched
        got = fetch_hub_file(mirror, f"{ds.name}/{src.path}", data_root() / ".mirror", what=ds.name)
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(got, folder / src.path)
        return folder / src.path
    dest = folder / src.path
    from huggingface_hub import constants

    if constants.is_offline_mode():   # one switch for "no network", whichever way a file is fetched
        raise DownloadError(f"dataset '{ds.name}' is not on disk ({dest}) and HF_HUB_OFFLINE is set: fetch it "
                            f"where {src.url} is reachable, or unset HF_HUB_OFFLINE")
    try:
        download_file(src.url, dest, max_attempts=int(env_float("RAYCHAT_DOWNLOAD_ATTEMPTS", 6)),
                      backoff=env_float("RAYCHAT_DOWNLOAD_BACKOFF", 2.0))
    except DownloadError as e:
        raise DownloadError(f"dataset '{ds.name}': {e}") from None
    return dest


def unpack_zip(zpath: Path, dest: Path, marker: str) -> None:
    """Unzip `zpath` so that `dest/marker` exists; the unpacked folder is renamed into place (never half there)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}_", dir=dest.parent) as tmp:
        try:
            with zipfile.ZipFile(zpath) as z:
                z.extractall(Path(tmp) / "x")        # zipfile drops absolute paths and '..' components
        except zipfile.BadZipFile:
            zpath.unlink(missing_ok=True)
            raise DownloadError(f"{zpath.name} is not a zip file (deleted; run the download again)") from None
        found = sorted((p.parent for p in (Path(tmp) / "x").rglob(marker)), key=lambda p: len(p.parts))
        if not found:
            raise DownloadError(f"the archive {zpath.name} holds no {marker}")
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        try:
            os.replace(found[0], dest)
        except OSError:
            if not (dest / marker).is_file():   # a concurrent downloader may have won the race (fine)
                raise DownloadError(f"cannot unpack into {dest}: it exists and has no {marker}") from None


def download(name: str, num_shards: int = 8, num_workers: int = 4, progress: bool = True,
             only: list[str] | None = None) -> dict:
    """Fetch a dataset into the data folder (idempotent: present files are skipped). For shard sets, training
    shards 0..num_shards-1 plus the validation shard. Raises DownloadError naming every file that failed."""
    ds = get(name)
    folder = data_root() / name
    t0 = time.monotonic()
    if ds.shard_repo:
        jobs = [(shard_name(i), Source(shard_name(i), repo=ds.shard_repo)) for i in shard_indices(ds, num_shards)]
    elif only is not None:
        jobs = [(k, ds.files[_keys(ds, k)]) for k in only]
    else:
        jobs = list(ds.files.items())
    if ds.unpack and local_path(name) is not None:
        jobs = []
    fetch_to = data_root() / f".{name}.download" if ds.unpack else folder   # archives unpack into `folder`
    todo = [(k, s) for k, s in jobs if not (fetch_to / s.path).is_file() or ds.unpack]
    bar = Progress(len(todo), desc=f"download {name}", unit="files", disable=not progress or not todo)
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futures = {pool.submit(_fetch, ds, s, fetch_to): k for k, s in todo}
        for fut in as_completed(futures):
            try:
                fut.result()
            except RaychatError as e:
                errors[futures[fut]] = str(e)
            bar.update(1)
    bar.close()
    if errors:
        detail = "; ".join(msg for _, msg in sorted(errors.items())[:3])
        raise DownloadError(f"{len(errors)} of {len(todo)} file(s) of dataset '{name}' failed: {detail}; "
                            f"run the command again to resume")
    if ds.unpack and todo:
        unpack_zip(fetch_to / ds.files["zip"].path, folder, ds.unpack)
        shutil.rmtree(fetch_to, ignore_errors=True)
    return {"dataset": name, "path": str(folder), "files": len(jobs), "downloaded": len(todo),
            "skipped": len(jobs) - len(todo), "seconds": round(time.monotonic() - t0, 2)}


def ensure(names, num_shards: int = 1, dev_default: bool = True, progress: bool = True, log=print) -> list[str]:
    """Download whichever of `names` are missing; returns the ones fetched."""
    todo = missing(names, dev_default=dev_default, num_shards=num_shards)
    for name in todo:
        log(f"[data] {name}: downloading into {data_root() / name}")
        s = download(name, num_shards=num_shards, progress=progress)
        log(f"[data] {name}: {s['downloaded']} file(s) downloaded, {s['skipped']} present, {s['seconds']:.1f} s")
    return todo


class Background:
    """`ensure` on a thread (pretraining shards while the tokenizer trains); `wait()` re-raises its error."""

    def __init__(self, names, **kwargs):
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(names,), kwargs=kwargs, daemon=True,
                                        name="raychat-data-download")
        self._thread.start()

    def _run(self, names, **kwargs):
        try:
            ensure(names, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting stage
            self.error = e

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error
