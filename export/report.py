"""parity/report.json: the one builder of its entries and the one writer; one entry per
(artifact, runtime, device), a new check of the same triple replacing the old entry."""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass, replace
from pathlib import Path

from stml_deploy.atomic import atomic_write_json
from stml_deploy.package import ModelPackage
from stml_deploy.parity_files import REJECTED, REPORT_NAME, ParityCheck, ParityEntry, read_report


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class ExportResult:
    """What an export made: one parity check per artifact, the artifacts that passed and took
    their final name, and every tolerance broken ("artifact: check")."""

    package: ModelPackage
    entries: list[ParityEntry]
    written: list[str]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def parity_entry(
    check: ParityCheck,
    artifact: str,
    precision: str,
    runtime: str,
    provider: str,
    device: str,
    reference: str,
    parity_data: str,
    int8_target: str | None = None,
    sha256: str | None = None,
) -> ParityEntry:
    """The report entry of a check; a failed artifact is named with the REJECTED suffix."""
    return ParityEntry(
        artifact=artifact if check.passed else artifact + REJECTED,
        precision=precision, runtime=runtime, provider=provider, device=device,
        reference=reference, parity_data=parity_data, check=check, int8_target=int8_target,
        sha256=sha256 if check.passed else None,
    )  # fmt: skip


def record(package: ModelPackage, entries: list[ParityEntry], forget: tuple[str, ...] = ()) -> Path:
    """Merge `entries` into the report atomically: each replaces the entry of the same
    artifact, runtime and device; a passing entry also clears that artifact's earlier rejected
    attempt. Entries of the artifacts in `forget` (deleted files) are dropped."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    fresh = {e.key: replace(e, checked_at=now) for e in entries}
    stale = {(a + REJECTED, r, d) for (a, r, d), e in fresh.items() if e.passed}
    kept = [
        e
        for e in read_report(package)
        if e.key not in fresh and e.key not in stale and e.artifact not in forget
    ]
    path = package.root / REPORT_NAME
    rows = [e.to_json() for e in kept + list(fresh.values())]
    atomic_write_json(path, {"format_version": 1, "results": rows})
    return path
