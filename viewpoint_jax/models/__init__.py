"""Networks: the Wan DiT with Pano/Perspective attention, the Wan VAE, umT5 and its tokenizer.

`from viewpoint_jax.models import load_dit, load_vae, load_umt5` — the submodules load on first use.
"""

import importlib

_EXPORTS = {
    "DiTConfig": "dit",
    "WanDiT": "dit",
    "load_dit": "dit",
    "load_dit_state": "dit",
    "WanVAEConfig": "vae",
    "WanVAE": "vae",
    "load_vae": "vae",
    "SpaceToDepthAutoencoder": "autoencoder",
    "UMT5Config": "umt5",
    "UMT5Encoder": "umt5",
    "load_umt5": "umt5",
    "Tokenizer": "tokenizer",
    "TextEncoder": "text_encoder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'viewpoint_jax.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
