"""Checkpoints: round trip, atomicity, durability (fsync before the rename), failed saves (a full disk) that clean
up and keep older checkpoints on every rank, listing, and clear errors for broken or mismatched files."""

import datetime
import errno
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, fresh_gpt

from raychat.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_model,
    load_state,
    resolve_checkpoint,
    save_checkpoint,
)
from raychat.common import RaychatError
from raychat.model import GPTConfig


def _model(seed=0, **kw):
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32, **kw)
    return fresh_gpt(cfg, seed)


def test_round_trip_with_optimizer_and_meta(tmp_path):
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).backward()
    opt.step()
    d = save_checkpoint(tmp_path / "base", 7, m, opt, config={"lr": 1e-3}, meta={"loader": {"pos": 3}})
    assert d.name == "step_000007"
    m2 = _model(seed=1)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    meta = load_state(d, m2, opt2)
    assert meta["step"] == 7 and meta["loader"] == {"pos": 3} and meta["config"] == {"lr": 1e-3}
    assert "commit" in meta["code"]
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


def test_listing_latest_and_resave_same_step(tmp_path):
    m = _model()
    for s in (5, 1, 12):
        save_checkpoint(tmp_path, s, m)
    (tmp_path / ".tmp-step_000099").mkdir()  # a crashed write is never listed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 5, 12]
    assert latest_checkpoint(tmp_path).name == "step_000012"
    save_checkpoint(tmp_path, 12, m, meta={"again": True})
    assert json.loads((tmp_path / "step_000012" / "meta.json").read_text())["again"] is True
    assert resolve_checkpoint(tmp_path, step=5).name == "step_000005"
    with pytest.raises(RaychatError, match="no checkpoint at step 6"):
        resolve_checkpoint(tmp_path, step=6)


def test_truncated_weights_give_a_clear_error(tmp_path):
    d = save_checkpoint(tmp_path, 1, _model())
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(RaychatError, match="truncated or corrupt"):
        load_state(d, _model())


def test_mismatched_model_and_missing_optimizer_shard(tmp_path):
    d = save_checkpoint(tmp_path, 1, _model())
    with pytest.raises(RaychatError, match="does not match the model"):
        load_state(d, _model(value_embeds=False))
    m = _model()
    with pytest.raises(RaychatError, match="no optimizer state for rank 0"):
        load_state(d, m, torch.optim.AdamW(m.parameters()))


def test_missing_checkpoint_and_corrupt_meta(tmp_path):
    with pytest.raises(RaychatError, match="no sft checkpoint found"):
        resolve_checkpoint(tmp_path, stage="sft")
    d = save_checkpoint(tmp_path / "checkpoints" / "base", 3, _model())
    (d / "meta.json").write_text("{not json")
    with pytest.raises(RaychatError, match="corrupt"):
        load_model(tmp_path, stage="base")


def test_load_model_from_run_dir(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "checkpoints" / "base", 2, m)
    m2, tok, meta = load_model(tmp_path, stage="base")
    assert tok is None and meta["step"] == 2 and not m2.training
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(m2(idx), m(idx))


def _enospc(path) -> OSError:
    """Write a few bytes (a partial file, as a full disk leaves) and fail the way a full disk does."""
    with open(path, "wb") as f:
        f.write(b"partial")
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fail_torch_save(obj, path, *a, **k):
    raise _enospc(path)


def _fail_save_file(tensors, path, *a, **k):
    raise _enospc(path)


_real_fsync = os.fsync


def _fail_dir_fsync(fd):
    if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    _real_fsync(fd)


@pytest.mark.parametrize("target,fake", [("torch.save", _fail_torch_save),
                                         ("safetensors.torch.save_file", _fail_save_file),
                                         ("os.fsync", _fail_dir_fsync)])
def test_failed_save_cleans_up_and_keeps_older_checkpoints(tmp_path, monkeypatch, target, fake):
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for s in (1, 2):
        save_checkpoint(tmp_path, s, m, opt)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step_000002").iterdir()}
    monkeypatch.setattr(target, fake)
    with pytest.raises(RaychatError, match="saving checkpoint step 3 .* failed .* on rank 0: .*(No space left|"
                       "Input/output error).* earlier checkpoints are untouched"):
        save_checkpoint(tmp_path, 3, m, opt)
    with pytest.raises(RaychatError, match="failed"):       # re-saving an existing step: the old one survives
        save_checkpoint(tmp_path, 2, m, opt, meta={"new": True})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001", "step_000002"]   # no .tmp-/.old- dirs
    assert {p.name: p.read_bytes() for p in (tmp_path / "step_000002").iterdir()} == before
    load_state(tmp_path / "step_000002", _model(seed=1), torch.optim.AdamW(_model().parameters(), lr=1e-3))


def test_a_rename_that_cannot_be_made_durable_is_rolled_back(tmp_path, monkeypatch):
    """The parent dir's fsync after the rename fails: the new step is taken back out (new step) or the old one
    put back (re-saved step), so only checkpoints known to be on disk are listed."""
    m = _model()
    save_checkpoint(tmp_path, 1, m, meta={"v": "old"})

    def fail_root_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        _real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_root_fsync)
    for step in (2, 1):
        with pytest.raises(RaychatError, match=f"step {step} .* moving it into place on rank 0: .*Input/output"):
            save_checkpoint(tmp_path, step, m, meta={"v": "new"})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]
    assert json.loads((tmp_path / "step_000001" / "meta.json").read_text())["v"] == "old"


def test_files_and_dirs_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_replace = os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 _real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b)))
    m = _model()
    final = save_checkpoint(tmp_path, 4, m, torch.optim.AdamW(m.parameters(), lr=1e-3))
    tmp = str(tmp_path / ".tmp-step_000004")
    rename = events.index(("replace", tmp, str(final)))
    synced_before = {e[1] for e in events[:rename] if e[0] == "fsync"}
    assert {os.path.join(tmp, p.name) for p in final.iterdir()} | {tmp} <= synced_before
    assert ("fsync", str(tmp_path)) in events[rename:]         # then the directory holding the new name


def _save_worker(rank, world, port, root, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        m = _model()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        save_checkpoint(root, 1, m, opt, rank=rank, world_size=world)
        if rank == 1:
            torch.save = _fail_torch_save            # this rank's disk is full for the next save
        try:
            save_checkpoint(root, 2, m, opt, rank=rank, world_size=world)
            result = "saved"
        except RaychatError as e:
            result = str(e)
        with open(f"{out}/rank{rank}.txt", "w") as f:
            f.write(result)
        dist.barrier()                               # both still in step: the group is usable after a failure
    finally:
        dist.destroy_process_group()
    # skip interpreter teardown: gloo's threads can abort the process there ("terminate called without an active
    # exception", SIGABRT) was seen here; a failure above still raises before reaching this line
    os._exit(0)


@pytest.mark.slow
def test_ranks_agree_on_a_failed_save(tmp_path):
    """Rank 1's disk is full: both ranks raise, naming rank 1 (no rank waits at a barrier for a rank that failed)."""
    port = free_port()
    root = tmp_path / "ckpt"
    mp.spawn(_save_worker, args=(2, port, str(root), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    for r in (r0, r1):  # every rank names the rank that failed and why
        assert "failed while writing files on rank 1: OSError: [Errno 28] No space left on device" in r, r
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]
