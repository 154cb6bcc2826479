"""Where torch work runs: ``--device auto|cpu|cuda|cuda:N`` resolved to a ``torch.device``.

torch is imported inside the function, so ``import agentrec`` stays light.
"""

from __future__ import annotations

import re

from agentrec.core.errors import UsageError

DEVICES_HELP = "auto, cpu, cuda or cuda:N"
DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(name: str = "auto", *, option: str = "--device"):
    """The ``torch.device`` for ``name``.

    Args:
        name: ``"auto"`` (CUDA when ``torch.cuda.is_available()``, else the CPU), ``"cpu"``, ``"cuda"``
            (the current CUDA device) or ``"cuda:N"``.
        option: how the caller names the setting in an error message.

    Raises:
        UsageError: a malformed name, or a CUDA device this machine does not have.
    """
    text = str(name).strip().lower()
    if not DEVICE_NAME.match(text):
        raise UsageError(f"{option} {name!r}: must be {DEVICES_HELP}")
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"{option} {name}: no CUDA device is available here (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda or 'none'}); use {option} cpu or auto")
    device = torch.device(text)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UsageError(f"{option} {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device

