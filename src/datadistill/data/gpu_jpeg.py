"""JPEG decoding on a GPU for passes over folders of JPEGs on CUDA: loader workers only read the files' bytes; the
device decodes them (torchvision's ``decode_jpeg``, nvJPEG on CUDA), resizes (antialiased bilinear) and crops.
On the CPU the same function uses libjpeg, which is how it is tested on machines without a GPU.

Its pixels differ slightly from the PIL path's (another decoder and resampler), so the statistics pass keys its
cache by the decoder. A batch the device cannot decode (e.g. a CMYK JPEG) is decoded by PIL instead.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.progress import log
from .decode import decode_resized, resize_center_crop, unreadable


def read_files(paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The files' bytes, concatenated (uint8), and their lengths: two tensors per batch between processes."""
    blobs = []
    for path in paths:
        try:
            blobs.append(np.fromfile(path, dtype=np.uint8))
        except OSError as exc:
            raise unreadable(path, exc) from None
    return torch.from_numpy(np.concatenate(blobs)), torch.tensor([len(b) for b in blobs])


def decode_jpeg_batch(
    data: torch.Tensor, lengths: torch.Tensor, paths: list[str], resize: int, crop: int, device: torch.device
) -> torch.Tensor:
    """uint8 N x 3 x crop x crop on ``device``: each JPEG decoded there, its shorter side resized to ``resize``
    and center-cropped (``resize_center_crop``, rounded back to 8 bits as the PIL path is)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    blobs = list(torch.split(data, lengths.tolist()))
    try:
        images = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        log.warning("JPEG decoding on %s failed (%s); decoding this batch with PIL", device, str(exc).splitlines()[0])
        decoded = np.stack([decode_resized(p, resize, crop) for p in paths])
        return torch.from_numpy(decoded).permute(0, 3, 1, 2).contiguous().to(device)
    out = torch.empty(len(images), 3, crop, crop, dtype=torch.uint8, device=device)
    for j, image in enumerate(images):
        resized = resize_center_crop(image[None].float(), resize, crop)[0]
        out[j] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out
