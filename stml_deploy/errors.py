"""User-facing errors: one readable line each. The CLI maps each class to its exit code in one
place (`cli.exit_code_of`); code that has to decide something catches a class, never parses a
message."""

from __future__ import annotations


class StmlError(Exception):
    """A failure caused by input or environment, explained in one readable line."""


class PackageError(StmlError):
    """A model package, training state or index on disk is missing, damaged, or of a format
    this stml does not read (`path`: the file or folder at fault)."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class ArtifactMismatchError(PackageError):
    """A package file (`rel`, relative to the package) is missing or does not match the sha256
    its config.json records."""

    def __init__(self, message: str, rel: str) -> None:
        super().__init__(message, rel)
        self.rel = rel


class ParityError(StmlError):
    """An exported artifact broke a parity tolerance; `failures` lists each broken check."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("parity failed: " + "; ".join(failures))
        self.failures = failures


class HubError(StmlError):
    """The Hugging Face Hub refused or could not serve a request (no such repo, no access,
    unreachable), or served files that are not an stml package."""


class MissingDependencyError(StmlError):
    """An optional library (torch, ONNX Runtime, TensorRT, cuda-python, faiss) is not
    installed: the message names the pip command or the machine to run on."""


class BackendUnavailableError(MissingDependencyError):
    """The library is there but the hardware or provider is not: no CUDA device, a GPU
    provider that does not start."""


class EngineLoadError(StmlError):
    """A TensorRT engine file does not deserialize here (another GPU or TensorRT version, or
    damaged): the build rebuilds it; any other error (CUDA, shapes) is not a reason to."""


class Interrupted(StmlError):
    """The user pressed Ctrl-C (SIGINT); the message says what was kept."""


class ImageLoadError(StmlError):
    """One image could not be read; callers skip it with a warning or stop under --strict."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason
