"""Training state on a disk that fills up: one line naming the file, the last complete state
kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stml_deploy.errors import PackageError
from tests.small_disk import fill, small_tmpfs
from training.state import STATE_DIR, Progress, read_progress, save_state


def test_disk_full_while_saving_state_keeps_the_last_one(tmp_path: Path) -> None:
    student, teacher = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(student.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with small_tmpfs(tmp_path / "disk") as out:
        save_state(out, student, teacher, optimizer, scheduler, Progress(1, 10, {}, {}))
        fill(out, leave=40_000)  # room for one set of weights (~17 KB each), not all files
        with pytest.raises(PackageError) as caught:
            save_state(out, student, teacher, optimizer, scheduler, Progress(2, 20, {}, {}))
        message = str(caught.value)
        assert message.startswith(f"cannot write {out / STATE_DIR}"), message
        assert ".tmp-" not in message  # the user's path, not a temporary name
        assert read_progress(out).epochs_done == 1
        assert sorted(p.name for p in out.iterdir()) == ["ballast", STATE_DIR]
