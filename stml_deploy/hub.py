"""Hub references, each parsed here and nowhere else: a PACKAGE argument `hf://ORG/NAME[@REV]`
(an stml package on the Hugging Face Hub, resolved through the local Hub cache) and a timm
backbone name `hf-hub:ORG/NAME[@REV]` (weights timm downloads)."""

from __future__ import annotations

from dataclasses import dataclass

from stml_deploy.package import ModelPackage

HF_PREFIX = "hf://"
HF_HUB_BACKBONE = "hf-hub:"


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None  # None: the default branch

    def __str__(self) -> str:
        return f"{HF_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def split_ref(ref: str) -> HubRef:
    """'org/name@rev' (an hf:// prefix allowed) -> HubRef; no @ -> revision None."""
    repo_id, _, revision = ref.removeprefix(HF_PREFIX).partition("@")
    return HubRef(repo_id, revision or None)


def is_hub_package(ref: str) -> bool:
    """Is this PACKAGE argument an hf:// reference (rather than a local folder)?"""
    return ref.startswith(HF_PREFIX)


def hub_backbone(name: str) -> HubRef | None:
    """The Hub repository of an `hf-hub:` timm backbone name; None for a plain timm name."""
    if not name.startswith(HF_HUB_BACKBONE):
        return None
    repo_id, _, revision = name.removeprefix(HF_HUB_BACKBONE).partition("@")
    return HubRef(repo_id, revision or None)


def open_package(ref: str, verify: bool = True) -> ModelPackage:
    """A model package from a local path or an hf:// reference, hashes verified."""
    if is_hub_package(ref):
        hub = split_ref(ref)
        return pull_to_cache(hub.repo_id, hub.revision, verify=verify)
    return ModelPackage.load(ref, verify=verify)


def pull_to_cache(
    repo_id: str, revision: str | None = None, verify: bool = True, token: str | None = None
) -> ModelPackage:
    """`token` for a private repo (else HF_TOKEN or the saved login, as the Hub client reads)."""
    from stml_deploy.hub_transfer import download_package

    return download_package(repo_id, revision, out=None, verify=verify, token=token)
