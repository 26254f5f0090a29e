"""User-facing errors: the CLI prints the message as one line and exits with `exit_code`."""

from __future__ import annotations


class StmlError(Exception):
    """A failure caused by input or environment, explained in one readable line."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class MissingDependencyError(StmlError):
    """An optional runtime (ONNX Runtime, TensorRT, CUDA, faiss, torch) is not available."""

    exit_code = 2


class ImageLoadError(StmlError):
    """One image could not be read; callers skip it with a warning or stop under --strict."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


class ArtifactMismatchError(StmlError):
    """A package file (`rel`, relative to the package) is missing or does not match the sha256
    its config.json records."""

    def __init__(self, message: str, rel: str) -> None:
        super().__init__(message)
        self.rel = rel
