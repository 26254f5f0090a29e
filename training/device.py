"""Device and mixed-precision choice: auto picks CUDA when torch sees one; bf16 autocast where
the GPU has it in hardware, else fp16 with a gradient scaler; CPU trains in fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from stml_deploy.errors import BackendUnavailableError, StmlError

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp16", "off")


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES and not name.startswith("cuda:"):
        raise StmlError(f"unknown device {name!r}; one of {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--device {name}: torch sees no CUDA device here (torch.cuda.is_available() is "
            "False); use --device cpu or run on a machine with an NVIDIA GPU"
        )
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if mode not in AMP_MODES:
        raise StmlError(f"unknown --amp {mode!r}; one of {', '.join(AMP_MODES)}")
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            raise StmlError(f"--amp {mode} needs a CUDA device (training runs on {device})")
        return None
    if mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or bf16_native(device):
        return torch.bfloat16
    return torch.float16


def bf16_native(device: torch.device) -> bool:
    """bf16 in hardware (Ampere and newer). torch's default also counts emulated bf16, which
    runs pre-Ampere GPUs far slower than fp16."""
    chosen = contextlib.nullcontext() if device.index is None else torch.cuda.device(device)
    with chosen:
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # a torch without the argument
            return torch.cuda.is_bf16_supported()


def autocast_factory(
    device: torch.device, dtype: torch.dtype | None
) -> Callable[[], AbstractContextManager]:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
