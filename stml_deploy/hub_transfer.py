"""Publishing and downloading model packages on the Hugging Face Hub with the huggingface_hub
client: `stml push` uploads the package (never engines/ or training state) with a model card in
one commit; `stml pull` downloads a branch, tag or commit, checks every file's name and sha256,
and writes the package atomically. Without --out, packages live in the Hub cache, which also
serves HF_HUB_OFFLINE=1."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stml_deploy.atomic import atomic_directory, recover_directory, sibling_path
from stml_deploy.config import HubOrigin
from stml_deploy.console import info, warn
from stml_deploy.errors import (
    ArtifactMismatchError,
    HubError,
    MissingDependencyError,
    PackageError,
    StmlError,
)
from stml_deploy.model_card import GENERATED_MARKER, render_card
from stml_deploy.package import CONFIG_NAME, ENGINES_DIR, ModelPackage
from stml_deploy.parity_files import REPORT_NAME

README = "README.md"
# what belongs to a published package: the recorded artifacts, the config, the card, the report
MANAGED_PREFIXES = ("onnx/", "parity/")


class _Hub:
    """The parts of huggingface_hub used here (its top-level module loads them lazily)."""

    def __init__(self) -> None:
        try:
            import huggingface_hub
            from huggingface_hub import constants, errors, utils
        except ImportError:
            raise MissingDependencyError(
                "huggingface_hub is not installed: pip install huggingface_hub"
            ) from None
        self.HfApi = huggingface_hub.HfApi
        self.CommitOperationAdd = huggingface_hub.CommitOperationAdd
        self.CommitOperationDelete = huggingface_hub.CommitOperationDelete
        self.snapshot_download = huggingface_hub.snapshot_download
        self.hf_hub_download = huggingface_hub.hf_hub_download
        self.constants, self.errors, self.utils = constants, errors, utils
        if not sys.stderr.isatty():  # transfer bars only on a terminal
            utils.disable_progress_bars()


def _hub() -> _Hub:
    return _Hub()


def check_repo_id(repo_id: str) -> None:
    hub = _hub()
    try:
        hub.utils.validate_repo_id(repo_id)
    except hub.errors.HFValidationError as exc:
        raise HubError(f"invalid repo id {repo_id!r}: {exc}") from None
    if repo_id.count("/") != 1:
        raise HubError(f"invalid repo id {repo_id!r}: expected ORG/NAME")


@contextlib.contextmanager
def _explained(repo_id: str, revision: str | None) -> Iterator[None]:
    """The client's exceptions as one-line StmlErrors naming the repo and revision. Its own
    log lines (retries, "skipping empty commit") are silenced: the outcome is reported once."""
    hub = _hub()
    errors = hub.errors
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        with _client_log_level(logging.ERROR):
            yield
    except StmlError:
        raise
    except errors.RevisionNotFoundError:
        raise HubError(f"{where}: revision {revision!r} does not exist") from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"{repo_id}: repository not found on {hub.constants.ENDPOINT} (or private: set HF_TOKEN or --token)"
        ) from None
    except errors.LocalEntryNotFoundError:
        raise HubError(
            f"{where} is not in the local Hub cache and the Hub cannot be reached"
            + (" (HF_HUB_OFFLINE=1)" if hub.constants.HF_HUB_OFFLINE else "")
        ) from None
    except errors.EntryNotFoundError as exc:
        raise HubError(f"{where}: file not found ({exc})") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise HubError(
                f"{where}: not authorized (HTTP {status}): give a write token with --token or HF_TOKEN"
            ) from None
        raise HubError(
            f"{where}: the Hub answered HTTP {status}: {str(exc).splitlines()[0]}"
        ) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise HubError(f"{where}: transfer failed ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # the HTTP stack's own errors (connection dropped, timeouts)
        if type(exc).__module__.split(".")[0] in (
            "httpx",
            "httpx2",
            "httpcore",
            "h11",
            "requests",
            "urllib3",
        ):
            raise HubError(f"{where}: transfer failed ({type(exc).__name__}: {exc})") from None
        raise


# --- push --------------------------------------------------------------------------------
@dataclass
class PushResult:
    repo_id: str
    commit_url: str
    commit_oid: str
    pr_url: str | None
    files: list[str]
    readme: str  # "generated" | "yours"
    unchanged: bool = False  # the Hub already held exactly these files: no new commit


def package_files(package: ModelPackage) -> list[str]:
    """The package's publishable files (relative paths): never engines/ or train_state/."""
    files = [CONFIG_NAME, *package.artifacts]
    if (package.root / REPORT_NAME).is_file():
        files.append(REPORT_NAME)
    return files


def push_package(
    package_ref: str,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    message: str | None = None,
    token: str | None = None,
    replace_readme: bool = False,
) -> PushResult:
    check_repo_id(repo_id)
    package = ModelPackage.load(package_ref)  # refuses a package that fails its own hashes
    hub = _hub()
    api = hub.HfApi(token=token)
    files = package_files(package)
    user_readme = package.root / README
    keep_user = user_readme.is_file() and GENERATED_MARKER not in user_readme.read_text(
        encoding="utf-8", errors="replace"
    )
    if keep_user and not replace_readme:
        readme_bytes, readme_kind = user_readme.read_bytes(), "yours"
    else:
        readme_bytes, readme_kind = render_card(package, repo_id).encode("utf-8"), "generated"
    # local folder paths of the training and evaluation data are not published
    config_bytes = package.config.dumps(published=True).encode("utf-8")
    operations = [
        hub.CommitOperationAdd(
            path_in_repo=rel,
            path_or_fileobj=config_bytes if rel == CONFIG_NAME else str(package.path(rel)),
        )
        for rel in files
    ]
    operations.append(hub.CommitOperationAdd(path_in_repo=README, path_or_fileobj=readme_bytes))
    with _explained(repo_id, revision):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=revision).sha
        remote = api.list_repo_files(repo_id, revision=revision)
        stale = [
            f
            for f in remote
            if (f.startswith(MANAGED_PREFIXES) or f == "model.safetensors") and f not in files
        ]
        operations += [hub.CommitOperationDelete(path_in_repo=f) for f in stale]
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"stml push: {package.name}",
            revision=revision,
            create_pr=create_pr,
        )
    unchanged = commit.oid == head and not commit.pr_url
    return PushResult(
        repo_id,
        commit.commit_url,
        commit.oid,
        commit.pr_url,
        [*files, README],
        readme_kind,
        unchanged,
    )


@contextlib.contextmanager
def _client_log_level(level: int) -> Iterator[None]:
    logger = logging.getLogger("huggingface_hub")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


# --- pull --------------------------------------------------------------------------------
def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        bool(name)
        and not path.is_absolute()
        and ".." not in path.parts
        and "\\" not in name
        and not name.startswith("~")
    )


def _remote_files(api: Any, repo_id: str, revision: str | None) -> tuple[list[str], str]:
    info_ = api.repo_info(repo_id, revision=revision)
    names = [s.rfilename for s in (info_.siblings or [])]
    unsafe = [n for n in names if not _safe_name(n)]
    if unsafe:
        raise HubError(
            f"{repo_id}: refusing to download files whose names leave the package folder: {', '.join(unsafe[:3])}"
        )
    return names, info_.sha


def _cached_package(
    hub: Any, repo_id: str, revision: str | None, token: str | None, verify: bool
) -> ModelPackage:
    """The package in the local Hub cache (downloaded when online). A cached copy that fails
    its hashes is downloaded again once when online; offline, the error names the folder."""
    commit = None
    if not hub.constants.HF_HUB_OFFLINE:
        _, commit = _remote_files(hub.HfApi(token=token), repo_id, revision)
    folder = hub.snapshot_download(repo_id, revision=revision, token=token, library_name="stml")
    if commit is not None and Path(folder).name != commit:
        raise HubError(
            f"{repo_id}@{revision or 'main'} moved to another commit during the download; run the command again"
        )
    package = ModelPackage.load(folder, verify=False)
    for _ in range(len(package.artifacts) + 1):
        try:
            if verify:
                package.verify()
            return package
        except ArtifactMismatchError as exc:
            if hub.constants.HF_HUB_OFFLINE:
                raise HubError(
                    f"{exc}; the Hub cache copy in {folder} is damaged: delete that folder and "
                    "run again with the network on (HF_HUB_OFFLINE unset)"
                ) from None
            warn(f"{exc}; the Hub cache copy is damaged, downloading {exc.rel} again")
            hub.hf_hub_download(repo_id, exc.rel, revision=commit, token=token, force_download=True)
    raise HubError(f"{repo_id}: files in the Hub cache stay damaged after downloading them again")


def _carry_engines(old: Path, new: Path, package: ModelPackage) -> None:
    """Engines built on this device take minutes to rebuild: keep those of ONNX variants the
    pulled package still has (names start with the variant's sha256), and the timing caches."""
    if not old.is_dir():
        return
    shas = {m.sha256[:12] for m in package.artifacts.values() if m.kind == "onnx"}
    for entry in old.iterdir():
        if entry.name.startswith("timing-") or entry.name[:12] in shas:
            new.mkdir(exist_ok=True)
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, new / entry.name)
        elif entry.name == "ort-tensorrt" and entry.is_dir():
            for cache in entry.iterdir():  # ONNX Runtime's cache, one folder per variant sha
                if cache.name in shas:
                    shutil.copytree(cache, new / entry.name / cache.name)


def _check_pull_target(target: Path, remote: list[str]) -> None:
    """--out may be new, empty, or an earlier pull of a package (replaced whole, except its
    engines/ cache); a folder holding anything else is refused so nothing of the user's is lost."""
    if not target.exists():
        return
    if target.is_file():
        raise StmlError(f"--out {target}: is a file; choose a folder")
    if not (target / CONFIG_NAME).is_file():
        if any(target.iterdir()):
            raise StmlError(
                f"--out {target}: exists and is not an stml package folder; choose another"
            )
        return
    try:
        known = set(ModelPackage.load(target, verify=False).artifacts)
    except StmlError:
        known = set()
    known |= {CONFIG_NAME, README, REPORT_NAME, ".gitattributes", *remote}
    foreign = sorted(
        str(p.relative_to(target))
        for p in target.rglob("*")
        if p.is_file()
        and str(p.relative_to(target).as_posix()) not in known
        and p.relative_to(target).parts[0] not in (ENGINES_DIR, ".cache")
    )
    if foreign:
        raise StmlError(
            f"--out {target}: holds files that are not part of the package ({', '.join(foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}); a pull replaces the folder, so move them or choose another --out"
        )


def download_package(
    repo_id: str,
    revision: str | None = None,
    out: str | os.PathLike[str] | None = None,
    verify: bool = True,
    token: str | None = None,
) -> ModelPackage:
    """Download into `out` (atomically, hashes checked, resolved commit recorded) or, with
    out=None, into the Hub cache (offline-capable) and return the package there."""
    check_repo_id(repo_id)
    hub = _hub()
    with _explained(repo_id, revision):
        if out is None:
            return _cached_package(hub, repo_id, revision, token, verify)
        api = hub.HfApi(token=token)
        names, commit = _remote_files(api, repo_id, revision)
        if CONFIG_NAME not in names:
            raise HubError(f"{repo_id}: not an stml model package (no {CONFIG_NAME})")
        target = Path(out).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)  # staging sits beside it: same filesystem
        recover_directory(target)  # an earlier pull killed half-way through its swap
        _check_pull_target(target, names)
        # named like atomic_directory's siblings: the next pull's swap removes an abandoned one
        staging = sibling_path(target, "pull")
        staging.mkdir()
        where = f"{repo_id}@{commit[:12]}"
        try:
            hub.snapshot_download(
                repo_id, revision=commit, token=token, local_dir=staging, library_name="stml"
            )
            with atomic_directory(target) as tmp:
                for name in names:
                    src = staging / name
                    if not src.is_file():
                        raise HubError(f"{where}: {name} missing after download")
                    dest = tmp / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dest)
                try:
                    package = ModelPackage.load(tmp, verify=True)  # every artifact's sha256
                except PackageError as exc:  # name the repository, not the temporary folder
                    raise HubError(
                        str(exc).replace(f"{tmp}/", f"{where}: ").replace(str(tmp), where)
                    ) from None
                _carry_engines(target / ENGINES_DIR, tmp / ENGINES_DIR, package)
                package.config.hub = HubOrigin(repo_id, revision or "main", commit)
                package.save()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    info(f"pulled {repo_id}@{commit[:12]} into {target}")
    return ModelPackage.load(target, verify=verify)
