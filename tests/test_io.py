"""Atomic writes: old or new content, never half; permissions as a plain open() gives."""

import os

import pytest

from vit_ablate.io import atomic_write_json, atomic_write_text, read_json


def test_atomic_write_replaces_and_keeps_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write_json(target, {"status": "completed"})
    atomic_write_json(target, {"status": "diverged"})
    assert read_json(target) == {"status": "diverged"}
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old\n")

    def crash(src, dst):
        raise OSError("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from vit_ablate.io import StorageError

    target = tmp_path / "result.json"
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(StorageError) as info:
        atomic_write_json(target, {"status": "completed"})
    assert str(target) in str(info.value) and "No space left on device" in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_names_the_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError, match=f"cannot write {folder / 'x.json'}"):
            atomic_write_json(folder / "x.json", {})
    finally:
        folder.chmod(0o755)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    from vit_ablate.io import finite_or_none

    found = []
    data = {"final": {"val/loss": float("nan"), "val/acc1": 0.5}, "curve": [1.0, float("inf")]}
    assert finite_or_none(data, found) == {"final": {"val/loss": None, "val/acc1": 0.5}, "curve": [1.0, None]}
    assert found == ["final.val/loss", "curve[1]"]
    atomic_write_json(tmp_path / "r.json", data)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_json(tmp_path / "r.json")["final"]["val/loss"] is None


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    from vit_ablate.io import remove_stale_temporaries

    for name in (".result.json.abc123.tmp", ".last.ckpt.x_9.tmp", "keep.tmp", "result.json", ".hidden"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".last.ckpt.x_9.tmp", ".result.json.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "keep.tmp", "result.json"]


def test_folder_lock_refuses_a_second_holder_names_it_and_is_removed_on_release(tmp_path):
    import subprocess
    import sys

    from vit_ablate.io import FolderBusy, FolderLock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vit_ablate.io import FolderLock; "
         f"lock = FolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as info:
            FolderLock(tmp_path).acquire()
        assert info.value.holder == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: taken over, then removed on release
    with FolderLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not lock.path.exists()
