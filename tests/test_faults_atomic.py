"""Nothing lost on a kill or a full disk: directory swaps killed (real SIGKILL) at every step
are restored, files that belong together are replaced together, and failed writes name the
file the user knows."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stml_deploy.atomic import (
    COMPLETE_MARKER,
    atomic_paths,
    atomic_write_bytes,
    disk_errors,
    recover_directory,
)
from stml_deploy.errors import PackageError
from tests.small_disk import fill, remount, small_tmpfs

ROOT = Path(__file__).resolve().parent.parent

# Writes version `argv[3]` of folder `argv[1]` through atomic_directory and stops (prints
# "stopped", then waits to be killed) at point `argv[2]`: "inside" the caller's writes, or
# before / after the n-th rename the swap makes.
SWAP_SCRIPT = """
import os, sys, time
from pathlib import Path
from stml_deploy.atomic import atomic_directory

target, point, version = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
real_replace, calls = os.replace, 0

def stop():
    print("stopped", flush=True)
    time.sleep(600)

def replace(src, dst):
    global calls
    if point == f"before-{calls + 1}":
        stop()
    real_replace(src, dst)
    calls += 1
    if point == f"after-{calls}":
        stop()

os.replace = replace
with atomic_directory(target) as tmp:
    (tmp / "version.txt").write_text(version)
    (tmp / "progress.json").write_text('{"version": "%s"}' % version)
    if point == "inside":
        stop()
print("finished", flush=True)
"""


def kill_swap_at(target: Path, point: str, version: str) -> None:
    """Run SWAP_SCRIPT in a fresh interpreter and SIGKILL it at `point`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SWAP_SCRIPT, str(target), point, version],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "stopped"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def write_version(target: Path, version: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SWAP_SCRIPT, str(target), "none", version],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "finished", proc.stderr


def version_of(target: Path) -> str | None:
    return (target / "version.txt").read_text() if target.exists() else None


# (kill point, whether a previous version exists, the version a reader must then find)
INTERLEAVINGS = [
    ("inside", True, "v1"),  # new copy half written
    ("before-1", True, "v1"),  # new copy complete, swap not begun: the old one is current
    ("after-1", True, "v2"),  # old moved aside, new not yet in place: the hole in the issue
    ("after-2", True, "v2"),  # new in place, old not yet moved to its deletion name
    ("after-3", True, "v2"),  # old being deleted
    ("inside", False, None),  # first write, half written: nothing to restore
    ("before-1", False, "v2"),  # first write, complete, not yet renamed
]


@pytest.mark.parametrize(("point", "previous", "expected"), INTERLEAVINGS)
def test_killed_swap_is_recovered_at_every_step(
    tmp_path: Path, point: str, previous: bool, expected: str | None
) -> None:
    target = tmp_path / "my[index]"  # glob characters in the name must not matter
    if previous:
        write_version(target, "v1")
    kill_swap_at(target, point, "v2")
    if point == "after-1":
        assert not target.exists()  # what the next command used to call "no index"
    restored = recover_directory(target)
    assert (restored is not None) == (point in ("after-1", "before-1") and expected == "v2")
    assert version_of(target) == expected
    # every leftover of the killed write is gone; the marker never stays in a live folder
    assert sorted(p.name for p in tmp_path.iterdir()) == (["my[index]"] if expected else [])
    if expected:
        assert not (target / COMPLETE_MARKER).exists()
    assert recover_directory(target) is None  # idempotent


def test_next_write_after_a_killed_swap_leaves_no_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "index"
    write_version(target, "v1")
    kill_swap_at(target, "after-1", "v2")
    write_version(target, "v3")
    assert version_of(target) == "v3"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_unrestorable_copy_is_named(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        target = disk / "index"
        write_version(target, "v1")
        kill_swap_at(target, "after-1", "v2")
        remount(disk, "ro")
        try:
            with pytest.raises(PackageError) as caught:
                recover_directory(target)
            [sibling] = [p for p in disk.iterdir() if ".tmp-" in p.name]
            assert sibling.name in str(caught.value) and "rename it to index" in str(caught.value)
            assert caught.value.path == sibling
        finally:
            remount(disk, "rw")
        recover_directory(target)
        assert version_of(target) == "v2"


def test_read_progress_restores_a_state_cut_between_renames(tmp_path: Path) -> None:
    from training.state import STATE_DIR, read_progress

    write_version(tmp_path / STATE_DIR, "v1")
    state = tmp_path / STATE_DIR
    (state / "progress.json").unlink()  # make a real progress.json for both versions below
    write_progress = (
        '{"epochs_done": %d, "global_step": 1, "config": {}, "data": {}, "history": []}'
    )
    (state / "progress.json").write_text(write_progress % 1)
    kill_swap_at(state, "after-1", "v2")
    [new] = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    (new / "progress.json").write_text(write_progress % 2)
    assert not state.exists()
    assert read_progress(tmp_path).epochs_done == 2
    assert version_of(state) == "v2"


def test_pair_is_replaced_together_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    a, b = tmp_path / "emb.npy", tmp_path / "emb.items.json"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    real_replace = os.replace

    def second_rename_fails(src, dst):
        if Path(dst) == b:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with (
        pytest.raises(PackageError, match=r"emb\.items\.json: No space left"),
        atomic_paths([a, b]) as (ta, tb),
    ):
        ta.write_bytes(b"new a")
        tb.write_bytes(b"new b")
    monkeypatch.undo()
    assert (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.items.json", "emb.npy"]
    with atomic_paths([a, b]) as (ta, tb):
        ta.write_bytes(b"new a")
        tb.write_bytes(b"new b")
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.items.json", "emb.npy"]


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        target = disk / "weights.bin"
        atomic_write_bytes(target, b"old")
        fill(disk, leave=4096)
        with pytest.raises(PackageError) as caught:
            atomic_write_bytes(target, os.urandom(1 << 20))
        assert str(caught.value) == f"cannot write {target}: No space left on device"
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in disk.iterdir()) == ["ballast", "weights.bin"]


def test_library_write_errors_without_a_file_name_are_named(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    big = {"w": torch.zeros(1 << 18)}
    writers = {  # safetensors: SafetensorError; torch.save: RuntimeError; numpy: OSError
        "model.safetensors": lambda path: save_file(big, str(path)),
        "optimizer.pt": lambda path: torch.save(big, path),
        "x.npy": lambda path: np.save(path, np.zeros(1 << 18)),
    }
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk, leave=8192)
        for name, write in writers.items():
            with pytest.raises(PackageError) as caught, disk_errors(disk / name):
                write(disk / name)
            assert str(caught.value).startswith(f"cannot write {disk / name}: "), caught.value
            assert caught.value.path == disk / name
    with pytest.raises(ZeroDivisionError), disk_errors(tmp_path / "x"):  # not a write failure
        _ = 1 / 0
