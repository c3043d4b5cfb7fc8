"""Data: the dataset registry (what each stage reads, where it lives, downloads), parquet shard sets (list,
prepare), the packing loader and the finetuning batches."""

from raychat.data.download import DownloadError, download_file, fetch_hub_file
from raychat.data.loader import PackedLoader, rows_to_batch
from raychat.data.prepare import prepare_dataset
from raychat.data.registry import DATASETS, MissingDataError, data_root, resolve, shard_dir
from raychat.data.shards import default_data_dir, iter_texts, list_shards, resolve_data_dir

__all__ = ["DATASETS", "DownloadError", "MissingDataError", "PackedLoader", "data_root", "default_data_dir",
           "download_file", "fetch_hub_file", "iter_texts", "list_shards", "prepare_dataset", "resolve",
           "resolve_data_dir", "rows_to_batch", "shard_dir"]
