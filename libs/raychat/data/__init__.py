"""Pretraining data: parquet shard sets (list, download, prepare) and the packing loader."""

from raychat.data.download import DATASETS, DownloadError, download_file, download_shards
from raychat.data.loader import PackedLoader
from raychat.data.prepare import prepare_dataset
from raychat.data.shards import default_data_dir, iter_texts, list_shards, resolve_data_dir

__all__ = ["DATASETS", "DownloadError", "PackedLoader", "default_data_dir", "download_file", "download_shards",
           "iter_texts", "list_shards", "prepare_dataset", "resolve_data_dir"]
