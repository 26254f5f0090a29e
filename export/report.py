"""parity/report.json: every parity result, one entry per (artifact, runtime, device); a new
check of the same triple replaces the old entry."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

from stml_deploy.atomic import atomic_write_json
from stml_deploy.package import ModelPackage
from stml_deploy.parity_files import REPORT_NAME, read_report


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


REJECTED = " (rejected)"


def record(
    package: ModelPackage, entries: list[dict[str, Any]], forget: tuple[str, ...] = ()
) -> Path:
    """Merge `entries` into the report atomically: each replaces the entry of the same
    artifact, runtime and device; a passing entry also clears that artifact's earlier rejected
    attempt. Entries of the artifacts in `forget` (deleted files) are dropped."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    key = lambda e: (e["artifact"], e["runtime"], e["device"])  # noqa: E731
    fresh = {key(e): {**e, "checked_at": now} for e in entries}
    stale = {(a + REJECTED, r, d) for (a, r, d), e in fresh.items() if e.get("passed")}
    kept = [
        e
        for e in read_report(package)
        if key(e) not in fresh and key(e) not in stale and e["artifact"] not in forget
    ]
    path = package.root / REPORT_NAME
    atomic_write_json(path, {"format_version": 1, "results": kept + list(fresh.values())})
    return path
