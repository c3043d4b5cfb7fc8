"""raychat.common.get_dist_info: the one rank/world helper."""

from raychat.common import DistInfo, get_dist_info


def test_dist_info_reads_torchrun_env_unless_initialized_only(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert get_dist_info() == DistInfo(3, 1, 4)
    assert not get_dist_info().is_main
    # no process group is initialised here: callers about to run a collective must see a single process
    assert get_dist_info(initialized_only=True) == DistInfo(0, 0, 1)


def test_dist_info_defaults_to_single_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert get_dist_info() == DistInfo(0, 0, 1) and get_dist_info().is_main
