"""The models a video is generated with, loaded once: the config to sample with, the device
meshes, and `Models` (the DiT restored into shardings, the autoencoder, the text encoder).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from viewpoint_jax.common import sharding
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation import decoding
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import checkpoints, lora


@dataclasses.dataclass
class Models:
    """Everything generation needs: the DiT, the autoencoder, the text encoder and the config.

    mesh, rules: where the DiT's (and text encoder's) weights are sharded, by `rules`, and the
    autoencoder's replicated (`decoding.replicate`; None: one device). prompt_embeddings: prompt
    -> its `(L, D)` float32 text embeddings on the host, filled by `encode_prompts`; generation
    reads them from here, so after `release_text_encoder()` the prompts encoded before can
    still be sampled.
    """

    model: Any
    autoencoder: Any
    text_encoder: Any
    config: Any
    mesh: jax.sharding.Mesh | None = None
    rules: sharding.LogicalRules = sharding.DEFAULT_RULES
    prompt_embeddings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def encode_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> `(P, L, D)` float32 embeddings on the host (one encoder call for the ones
        not encoded yet), remembered in `prompt_embeddings`."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.prompt_embeddings]
        if missing:
            if self.text_encoder is None:
                raise ValueError(
                    f"the text encoder was released; prompt {missing[0]!r} was not encoded before "
                    "release_text_encoder() (encode every prompt first)"
                )
            embeddings, _ = self.text_encoder.encode_text(missing)
            self.prompt_embeddings.update(zip(missing, np.asarray(jax.device_get(embeddings))))
        return np.stack([self.prompt_embeddings[p] for p in prompts])

    def release_text_encoder(self) -> None:
        """Frees the text encoder's device memory (umT5-XXL: 11 GB) before denoising; the
        embeddings `encode_prompts` made stay usable."""
        if self.text_encoder is None:
            return
        for array in jax.tree.leaves(nnx.state(self.text_encoder.encoder)):
            if isinstance(array, jax.Array) and not array.is_deleted():
                array.delete()
        self.text_encoder = None

    def replica(self, mesh: jax.sharding.Mesh) -> Models:
        """These models on another group of devices, `mesh`, of the same shape: the DiT's
        weights copied device to device with the same partition specs, the autoencoder's
        replicated there, the encoded prompts shared. ValueError unless the text encoder was
        released (it is not copied: encode every prompt first)."""
        if self.text_encoder is not None:
            raise ValueError("release_text_encoder() before making a replica (encode first)")
        if self.mesh is None or dict(mesh.shape) != dict(self.mesh.shape):
            raise ValueError(f"a replica needs a mesh shaped like {self.mesh}, got {mesh}")
        graphdef, state = nnx.split(self.model)
        state = jax.device_put(
            state, jax.tree.map(lambda x: jax.sharding.NamedSharding(mesh, x.sharding.spec), state)
        )
        autoencoder = self.autoencoder
        if isinstance(autoencoder, nnx.Module):  # a new module: `replicate` updates in place
            autoencoder = nnx.merge(*nnx.split(autoencoder))
        return dataclasses.replace(
            self,
            model=nnx.merge(graphdef, state),
            autoencoder=decoding.replicate(autoencoder, mesh),
            mesh=mesh,
        )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> `get_config(arg)` of that file (ml_collections style)."""
    return config_lib.load_config_file(spec)


SAMPLE_DTYPES = ("bfloat16", "float32")


def sampling_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """The default sampling mesh: FSDP over `devices` (default: this process's devices).

    Weights split over every device; the 2-sample guidance batch splits over fsdp only where it
    divides (2 devices), else each device runs the whole batch on all-gathered layer weights.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    return sharding.make_mesh({"fsdp": len(devices)}, devices)


def latent_shape(
    config: ml_collections.ConfigDict,
    num_frames: int | None = None,
    *,
    autoencoder: autoencoder_lib.Autoencoder | None = None,
) -> tuple[int, int, int, int, int]:
    """The `(1, f, h, w, C)` map latent (of the frames of `config.data.representation`) of one
    sample of `config.data` (from the autoencoder's shapes only: no weights are read).
    `autoencoder`: the config's, where the caller holds it (default: built abstract here)."""
    data = config.data
    video = (1, num_frames or data.num_frames, *data_config_lib.canvas_hw(data), 3)
    autoencoder = build.abstract_autoencoder(config) if autoencoder is None else autoencoder
    return autoencoder_lib.latent_shape(autoencoder, video)


def load_models(
    config: ml_collections.ConfigDict,
    checkpoint: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    dtype: str = "bfloat16",
) -> Models:
    """Builds the text encoder and autoencoder from `config` and restores the DiT from a training
    run directory or a converted checkpoint.

    The DiT is restored straight into shardings over `mesh` (default `sampling_mesh()`: FSDP
    over all local devices) by the config's logical-axis rules (`config.sharding_rules`: the
    width over fsdp, heads and FFN over tensor), its weights read as `dtype` ("bfloat16":
    half the memory of the fp32 checkpoint, and bf16 matmuls; "float32": both in fp32). The
    text encoder is sharded over the same mesh; `Models.release_text_encoder()` frees it once
    the prompts are encoded. The autoencoder's weights are replicated over the mesh (they are
    small), which its tiled decode is spread over (`decoding.decode_latents`).

    Raises:
      UserError: no checkpoint directory. ValueError: an unknown dtype, or a mesh that does not
        divide the DiT (heads by tensor, the config's tokens by sequence), naming the axis.
    """
    if dtype not in SAMPLE_DTYPES:
        raise ValueError(f"dtype must be one of {SAMPLE_DTYPES}, got {dtype!r}")
    if not Path(checkpoint).is_dir():
        raise UserError(f"--checkpoint: no such directory {checkpoint}")
    mesh = sampling_mesh() if mesh is None else mesh
    rules = config_lib.logical_rules(config)
    # Checked on the config's sizes before any weight is read (a 14B restore takes minutes).
    latent = latent_shape(config)
    model_config = build.dit_config(config)  # derived once, handed down
    denoising.check_mesh_fits(model_config, mesh, latent)
    model = checkpoints.restore_model_for_inference(
        checkpoint,
        config,
        mesh=mesh,
        rules=rules,
        model_config=model_config,
        dtype=dtype,
        param_dtype=dtype,
    )
    denoising.check_mesh_fits(model.config, mesh, latent)  # a checkpoint's own sizes
    return Models(
        model=model,
        autoencoder=decoding.replicate(build.build_autoencoder(config), mesh),
        text_encoder=build.build_text_encoder(config, mesh=mesh, rules=rules),
        config=config,
        mesh=mesh,
        rules=rules,
    )


# The command's flags that point the config's frozen components at files on this machine: flag ->
# config key (`sampling_config`'s `components`).
COMPONENT_FLAGS = {
    "vae": "autoencoder.checkpoint",
    "text_encoder": "text_encoder.checkpoint",
    "tokenizer": "text_encoder.tokenizer",
}


def sampling_config(
    checkpoint: str | os.PathLike,
    config: ml_collections.ConfigDict | None = None,
    components: dict[str, str | None] | None = None,
    *,
    lora_base: str | None = None,
    lora_scale: float | None = None,
) -> ml_collections.ConfigDict:
    """The config to sample with: `config` if given, else the one that trained the run
    (RUN_DIR/config.json); `components` (flag -> path, None: keep) override its file paths.
    A component the config needs but has no file for is refused, naming its key and flag.

    A LoRA run's base is found on this machine (`training.lora.locate_base`: `lora_base`, the
    flag --lora_base, where it moved; else the path the run recorded) and held to the run's
    fingerprint; `lora_scale` (--lora_scale) weighs its adapters. Either flag on a checkpoint
    that is no LoRA run is refused in one line.
    """
    if config is None:
        saved = Path(checkpoint) / "config.json"
        if not saved.is_file():
            raise UserError(
                f"--checkpoint {checkpoint} has no config.json of a training run: pass --config"
            )
        if (Path(checkpoint) / "params").is_dir():  # a converted DiT: the model's shape only
            raise UserError(f"--checkpoint {checkpoint} is a converted DiT: pass --config")
        config = config_lib.run_config_from_file(saved)
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked; the caller's stays as it is
    for flag, path in (components or {}).items():
        if path is not None:
            config.update_from_flattened_dict({COMPONENT_FLAGS[flag]: path})
    _check_components(config)
    _lora_options(config, checkpoint, lora_base, lora_scale)
    return config


def _check_components(config: ml_collections.ConfigDict) -> None:
    """UserError naming the key and flag of a component the config needs and has no file for."""
    needed = []
    if config.get("autoencoder", {}).get("kind") == "wan_vae":
        needed.append("vae")
    if config.get("text_encoder", {}).get("kind") == "umt5":
        needed += ["text_encoder", "tokenizer"]
    for flag in needed:
        key = COMPONENT_FLAGS[flag]
        path = config
        for part in key.split("."):
            path = path[part]
        if not path or not Path(path).exists():
            where = f"{path!r} does not exist" if path else "is empty"
            raise UserError(f"config.{key} {where} on this machine: pass --{flag}=PATH")


def _lora_options(
    config: ml_collections.ConfigDict,
    checkpoint: str | os.PathLike,
    lora_base: str | None,
    lora_scale: float | None,
) -> None:
    """Sets a LoRA run's base (found on this machine) and adapter scale in `config`."""
    if not Path(checkpoint).is_dir():
        return  # `load_models` names the missing --checkpoint
    lora_run = config_lib.lora_enabled(config) and not (Path(checkpoint) / "params").is_dir()
    for flag, value in (("lora_base", lora_base), ("lora_scale", lora_scale)):
        if value is not None and not lora_run:  # a converted DiT holds its every weight
            raise UserError(f"--{flag}: {checkpoint} is not a LoRA run (config.lora)")
    if lora_scale is not None:
        config.lora.scale = lora_scale
    if lora_run:
        config.model.init_checkpoint = lora.locate_base(checkpoint, config, lora_base)


def sampling_meshes(
    spec: str | None, devices: Sequence[jax.Device] | None = None
) -> list[jax.sharding.Mesh]:
    """`--mesh` "axis=size,..." (axes of `sharding.MESH_AXES`, one size may be -1: the rest) ->
    the meshes one model each runs on, over this process's `devices` (default: its local ones):
    one when the sizes cover them all, else one per group of that many consecutive devices
    (`requests.run_prompt_file` spreads a prompt file's lines over the groups). None: the default
    `[sampling_mesh(devices)]`. UserError naming --mesh for a bad spec or a device count the
    sizes do not divide."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not spec:
        return [sampling_mesh(devices)]
    sizes = {}
    for part in spec.split(","):
        axis, _, size = part.partition("=")
        if axis.strip() not in sharding.MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise UserError(
                f"--mesh {spec!r}: expected axis=size pairs over {sharding.MESH_AXES}, "
                f"e.g. fsdp=8 or data=2,fsdp=4"
            )
        sizes[axis.strip()] = int(size)
    group = len(devices) if -1 in sizes.values() else int(np.prod(list(sizes.values())))
    if group < 1 or len(devices) % group:
        raise UserError(
            f"--mesh {spec!r}: a model on {group} devices does not divide this process's "
            f"{len(devices)} devices into groups"
        )
    try:
        return [
            sharding.make_mesh(sizes, devices[i : i + group]) for i in range(0, len(devices), group)
        ]
    except ValueError as error:
        raise UserError(f"--mesh {spec!r}: {error}") from None
