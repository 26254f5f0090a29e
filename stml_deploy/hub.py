"""Resolving a PACKAGE argument: a local folder, or `hf://ORG/NAME[@REV]` on the Hugging Face
Hub (resolved through the local Hub cache)."""

from __future__ import annotations

from stml_deploy.package import ModelPackage

HF_PREFIX = "hf://"


def open_package(ref: str, verify: bool = True) -> ModelPackage:
    """A model package from a local path or an hf:// reference, hashes verified."""
    if ref.startswith(HF_PREFIX):
        return pull_to_cache(*split_ref(ref[len(HF_PREFIX) :]), verify=verify)
    return ModelPackage.load(ref, verify=verify)


def split_ref(ref: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); no @ -> revision None (the default branch)."""
    repo_id, _, revision = ref.partition("@")
    return repo_id, revision or None


def pull_to_cache(
    repo_id: str, revision: str | None = None, verify: bool = True, token: str | None = None
) -> ModelPackage:
    """`token` for a private repo (else HF_TOKEN or the saved login, as the Hub client reads)."""
    from stml_deploy.hub_transfer import download_package

    return download_package(repo_id, revision, out=None, verify=verify, token=token)
