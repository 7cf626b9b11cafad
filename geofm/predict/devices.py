"""Which torch devices a prediction runs on."""

from __future__ import annotations

from collections.abc import Sequence

from geofm.errors import GeofmError


def device_list(device: str | Sequence[str] = "cpu", gpus: int | None = None) -> list[str]:
    """The devices to put one model replica on each.

    Args:
        device: A torch device (``"cpu"``, ``"cuda:1"``), several separated by commas
            (``"cuda:0,cuda:1"``), or a sequence of them.
        gpus: Use the first ``gpus`` GPUs instead of ``device``.

    Raises:
        GeofmError: An empty device name, or ``gpus`` below 1 or above the GPUs present.

    Example:
        >>> device_list("cuda:0, cuda:1")
        ['cuda:0', 'cuda:1']
    """
    if gpus is not None:
        import torch

        if gpus < 1:
            raise GeofmError(f"--devices must be at least 1, got {gpus}",
                             hint="give a GPU count, or leave it out to run on --device")
        have = torch.cuda.device_count()
        if gpus > have:
            raise GeofmError(f"{gpus} GPUs requested but {have} available",
                             hint="lower --devices, or name devices with --device")
        return [f"cuda:{i}" for i in range(gpus)]
    devices = [d.strip() for d in device.split(",")] if isinstance(device, str) else list(device)
    if not devices or not all(devices):
        raise GeofmError(f"no device in {device!r}", hint="e.g. cpu, cuda, cuda:0,cuda:1")
    return devices
