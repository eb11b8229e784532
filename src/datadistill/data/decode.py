"""Decoding image files: whole images as float (``load_image``), and straight to the size a pass needs as uint8
(``decode_resized``), the fast path of image-folder datasets.

Both follow one preprocessing rule, "resize the shorter side to R (bilinear, antialiased), then center-crop C"
(``resize_center_crop`` on tensors). ``decode_resized`` does it in PIL on 8-bit pixels: a JPEG is decoded at 1/2,
1/4 or 1/8 scale when the target is that much smaller (libjpeg's DCT scaling, ``Image.draft``), and only the pixels
of the crop are resampled (``resize(box=...)``). Without the reduced-scale decode it is within one grey level of
decoding the whole image to float and resizing that with torch (rounding to 8 bits); with it, within a few.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import DataError

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
# A JPEG is decoded at a reduced scale only down to twice the target size (Pillow's ``thumbnail`` default): the
# DCT scaling filters more coarsely than the antialiased resize, so the resize keeps the last factor 2. Against a
# full decode this keeps 500x375 photos within ~6 grey levels at 32 px (~22 with no margin) at about the same speed.
DRAFT_GAP = 2


def unreadable(path: str | Path, exc: BaseException) -> DataError:
    """The one-line error for a file that cannot be decoded, wherever it is found (also inside loader workers)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"corrupt or unreadable image {path}: {reason}")


def decode_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a file it cannot read (a decompression bomb is not an OSError)."""
    from PIL import Image, UnidentifiedImageError

    return UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to ``resize``."""
    scale = resize / min(height, width)
    return max(resize, round(height * scale)), max(resize, round(width * scale))


def resize_center_crop(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Resize the shorter side to ``resize`` (bilinear, antialiased) then center-crop ``crop``."""
    h, w = images.shape[-2:]
    size = resized_size(h, w, resize)
    if size != (h, w):
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    h, w = images.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def _high_bit_to_unit(arr: np.ndarray) -> np.ndarray:
    """16-bit and 32-bit grey levels to [0, 1] (16-bit data is recognised by values above 255)."""
    arr = arr.astype(np.float32)
    return np.clip(arr / (65535.0 if arr.max() > 255 else 255.0), 0.0, 1.0)


def load_image(path: str | Path) -> torch.Tensor:
    """Decode one image file to float 3 x H x W in [0, 1]; grayscale, RGBA, palette and 16-bit are converted."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in HIGH_BIT_MODES:
                arr = _high_bit_to_unit(np.asarray(im))
                return torch.from_numpy(np.ascontiguousarray(arr))[None].expand(3, -1, -1).clone()
            rgb = im.convert("RGB")
    except decode_errors() as exc:
        raise unreadable(path, exc) from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def decode_resized(path: str | Path, resize: int, crop: int) -> np.ndarray:
    """One image file, resized (shorter side ``resize``) and center-cropped to ``crop``: uint8 crop x crop x 3."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            new_h, new_w = resized_size(height, width, resize)
            source_w, source_h = float(width), float(height)  # the original extent, in the decoded pixels
            if im.format == "JPEG" and (DRAFT_GAP * new_w < width or DRAFT_GAP * new_h < height):
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the size asked for
                drafted = im.draft(None, (DRAFT_GAP * new_w, DRAFT_GAP * new_h))
                if drafted is not None:
                    source_w, source_h = drafted[1][2], drafted[1][3]
            im.load()
            image, high_bit = _resizable(im)
            left, top = (new_w - crop) // 2, (new_h - crop) // 2
            if (new_w, new_h) == image.size:
                out = image.crop((left, top, left + crop, top + crop))
            else:  # resample only the crop: the same pixels as resizing everything and cropping after
                sx, sy = source_w / new_w, source_h / new_h
                box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
                out = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
            arr = np.asarray(out)
    except decode_errors() as exc:
        raise unreadable(path, exc) from None
    if high_bit:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def _resizable(im):
    """``im`` in a mode PIL resizes as the float path would: RGB and L as they are, high-bit grey as float 0..255
    (True as second value), everything else (palette, RGBA, CMYK, ...) converted to RGB as ``load_image`` does."""
    from PIL import Image

    if im.mode in ("RGB", "L"):
        return im, False
    if im.mode in HIGH_BIT_MODES:
        return Image.fromarray(_high_bit_to_unit(np.asarray(im)) * np.float32(255.0)), True
    return im.convert("RGB"), False
