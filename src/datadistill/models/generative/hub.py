"""Loading a diffusers component (a DiT transformer, an AutoencoderKL) from a local folder or the hub: the
libraries' many failures (missing files, hub errors, a wrong config) become one ``WeightsError`` line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from ...core.errors import WeightsError, first_line


def local_or_hub(spec: str, aliases: dict[str, str], what: str) -> tuple[str, bool]:
    """``(source, local)``: an existing folder (``~`` expanded), else a hub id (``aliases`` expand short names).
    A spec that looks like a path but does not exist is refused: "{what} folder PATH not found"."""
    path = Path(spec).expanduser()
    if path.exists():
        return str(path), True
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise WeightsError(f"{what} folder {path} not found")
    return aliases.get(spec, spec), False


def find_config(folder: Path, subfolders: Iterable[str | None], missing: str) -> tuple[str | None, dict]:
    """The first of ``subfolders`` (None: the folder itself) holding a ``config.json``, and that config;
    ``missing`` is the error when none does."""
    for sub in subfolders:
        candidate = (folder / sub if sub else folder) / "config.json"
        if candidate.is_file():
            try:
                return sub, json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise WeightsError(f"{candidate} is not valid JSON: {exc}") from None
    raise WeightsError(missing)


def load_component(
    cls: type, what: str, source: str, local: bool, subfolder: str | None, example: str, **kwargs
) -> nn.Module:
    """``cls.from_pretrained`` of a folder or a hub id (never the network for a folder); ``example`` is the hub
    id the error message suggests downloading."""
    try:
        return cls.from_pretrained(source, subfolder=subfolder, local_files_only=local, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub and file errors come in many types; the message is what matters
        where = f"the folder {source}" if local else f"the hub ({source})"
        raise WeightsError(
            f"cannot load the {what} from {where}: {first_line(exc)}. Without network access, download it "
            f"elsewhere (e.g. huggingface-cli download {example} --local-dir DIR) and pass the folder"
        ) from None
