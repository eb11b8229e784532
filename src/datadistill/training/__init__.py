"""Training loops and the models the toolkit trains itself (``datadistill pretrain KIND``), each module
registering its pretrainer."""

from . import diffusion, experts, flow, vae  # each registers its pretrainer
from .pretrainers import PRETRAINERS, get_pretrainer

__all__ = ["PRETRAINERS", "diffusion", "experts", "flow", "get_pretrainer", "vae"]
