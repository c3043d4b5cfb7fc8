"""The CORE eval bundle: where it is, what it holds, and downloading the official one.

Layout (the one DCLM/nanochat use): `core.yaml` (`icl_tasks`: label, dataset_uri, num_fewshot, icl_task_type,
optional continuation_delimiter), `eval_meta_data.csv` (`Eval Task`, `Random baseline` in percent) and
`eval_data/<category>/<task>.jsonl`.

The official bundle (22 tasks, ~160 MB zip, top folder `eval_bundle/`) is nanochat's download from
`EVAL_BUNDLE_URL`; the data registry keeps it as dataset `eval_bundle` (`raychat data download eval_bundle`).
The shared development copy at ../shared/data/eval_bundle holds 20 of the 22 (squad and coqa were not sourced;
its core.yaml lists them under `missing_icl_tasks`). Whatever a bundle lacks is reported by name, and
CORE is then the mean over the tasks that ran, which is not comparable to a 22-task CORE: reports must say so.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raychat.common import RaychatError, get_dist_info, print0
from raychat.data import registry
from raychat.data.registry import EVAL_BUNDLE_URL

# The 22 CORE tasks (DCLM's low-variance set), in DCLM's order.
CORE_TASK_LABELS = (
    "hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_easy", "arc_challenge", "copa", "commonsense_qa",
    "piqa", "openbook_qa", "lambada_openai", "hellaswag", "winograd", "winogrande", "bigbench_dyck_languages",
    "agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_operators", "bigbench_repeat_copy_logic", "squad",
    "coqa", "boolq", "bigbench_language_identification",
)
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")


@dataclass(frozen=True)
class CoreTaskSpec:
    label: str
    task_type: str               # multiple_choice | schema | language_modeling
    path: Path                   # the task's jsonl
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float       # percent, from eval_meta_data.csv


@dataclass
class CoreBundle:
    root: Path
    tasks: list[CoreTaskSpec]
    missing: list[str] = field(default_factory=list)   # "label (reason)" for each CORE task that cannot run


def load_bundle(bundle_dir) -> CoreBundle:
    """Parse a bundle directory; tasks whose data file is absent are listed in `missing`, not fatal."""
    root = Path(bundle_dir).expanduser()
    cfg_path, meta_path = root / "core.yaml", root / "eval_meta_data.csv"
    for p in (cfg_path, meta_path):
        if not p.is_file():
            raise RaychatError(f"not a CORE eval bundle: {p} is missing (expected core.yaml, eval_meta_data.csv "
                               f"and eval_data/ in {root})")
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RaychatError(f"{cfg_path}: invalid YAML ({e})") from None
    baselines = {}
    with open(meta_path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            try:
                baselines[row["Eval Task"]] = float(row["Random baseline"])
            except (KeyError, TypeError, ValueError):
                continue
    tasks, missing = [], []
    for i, t in enumerate(cfg.get("icl_tasks") or []):
        try:
            label, uri, ttype = t["label"], t["dataset_uri"], t["icl_task_type"]
            shots = t.get("num_fewshot", [0])
            shots = int(shots[0] if isinstance(shots, list) else shots)
        except (KeyError, TypeError, ValueError, IndexError):
            raise RaychatError(f"{cfg_path}: icl_tasks[{i}] needs label, dataset_uri, icl_task_type, "
                               "num_fewshot") from None
        if ttype not in TASK_TYPES:
            raise RaychatError(f"{cfg_path}: task {label!r} has unknown icl_task_type {ttype!r}")
        if label not in baselines:
            raise RaychatError(f"{meta_path}: no 'Random baseline' for task {label!r}")
        path = root / "eval_data" / uri
        if not path.is_file():
            missing.append(f"{label} (no file eval_data/{uri})")
            continue
        tasks.append(CoreTaskSpec(label, ttype, path, shots, t.get("continuation_delimiter", " "), baselines[label]))
    present = {t.label for t in tasks} | {m.split(" ")[0] for m in missing}
    for t in cfg.get("missing_icl_tasks") or []:
        if t.get("label") not in present:
            missing.append(f"{t.get('label')} (listed as missing by the bundle)")
            present.add(t.get("label"))
    missing += [f"{label} (not in core.yaml)" for label in CORE_TASK_LABELS if label not in present]
    return CoreBundle(root, tasks, missing)


def download_eval_bundle(dest_dir, url: str = EVAL_BUNDLE_URL) -> Path:
    """Download the bundle zip from `url` and unpack it so that `dest_dir/core.yaml` exists (resumable, and
    atomic: the unpacked folder is renamed into place, so an interrupted download never leaves a half bundle
    that looks complete)."""
    from raychat.data.download import download_file

    dest = Path(dest_dir).expanduser()
    if (dest / "core.yaml").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".eval_bundle_", dir=dest.parent) as tmp:
        zpath = Path(tmp) / "eval_bundle.zip"
        try:
            download_file(url, zpath, max_attempts=3)
            registry.unpack_zip(zpath, dest, "core.yaml")
        except RaychatError as e:
            raise RaychatError(f"could not get the CORE eval bundle from {url}: {e}; pass a local bundle "
                               "directory instead (--eval-bundle DIR)") from None
    print0(f"CORE eval bundle ready at {dest}")
    return dest


def find_eval_bundle(bundle_dir=None, download: bool = False, url: str = EVAL_BUNDLE_URL) -> Path:
    """Pick the bundle: an explicit directory (downloaded into if absent and `download`), else the downloaded
    official bundle (data registry), else download it (if allowed), else the shared 20-task copy; error with what
    to do otherwise.

    Under an initialised process group every rank must call this: rank 0 decides (and downloads, if its
    `download` is true) and broadcasts the path, so all ranks evaluate the same tasks. Callers may pass
    `download=(rank == 0)`."""
    import torch.distributed as dist

    info = get_dist_info(initialized_only=True)
    if info.world_size > 1:
        box: list = [None]
        if info.rank == 0:
            try:
                box[0] = str(_find_eval_bundle(bundle_dir, download, url))
            except RaychatError as e:
                box[0] = e                   # every rank raises the same error instead of hanging
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], RaychatError):
            raise box[0]
        return Path(box[0])
    return _find_eval_bundle(bundle_dir, download, url)


def _find_eval_bundle(bundle_dir, download: bool, url: str) -> Path:
    if bundle_dir is not None:
        p = Path(bundle_dir).expanduser()
        if (p / "core.yaml").is_file():
            return p
        if download:
            return download_eval_bundle(p, url)
        raise RaychatError(f"no CORE eval bundle at {p} (core.yaml missing); pass --download to fetch the official "
                           f"one from {url}")
    local = registry.local_path("eval_bundle")
    if local is not None:
        return local
    try:
        shared = registry.resolve("eval_bundle")
    except registry.MissingDataError:
        shared = None
    if download:
        try:
            if url == EVAL_BUNDLE_URL:
                registry.download("eval_bundle")
                return registry.resolve("eval_bundle")
            return download_eval_bundle(registry.data_root() / "eval_bundle", url)
        except RaychatError as e:
            if shared is None:
                raise
            print0(f"warning: {e}; using the shared 20-task bundle at {shared} instead")
    if shared is not None:
        return shared
    raise RaychatError(f"no CORE eval bundle found: run `raychat data download eval_bundle`, pass --eval-bundle DIR, "
                       f"or allow the download from {url}")
