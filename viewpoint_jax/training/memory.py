"""Per-device memory of a training config, from shapes only (nothing is allocated).

The parameter, optimizer-state and gradient bytes are exact, leaf by leaf, from the model's
abstract shapes and the sharding rules on a mesh of the given sizes; activations are an estimate
(`activation_bytes`). Used by the start-up summary of a training run and by
`tools/memory_plan.py` (which adds the compiled plan and sampling).
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
from flax import nnx

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.models import attention as attention_lib
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import lora as lora_lib
from viewpoint_jax.models.dit import count_params
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib


def sharded_bytes(abstract_tree, mesh_sizes: dict[str, int], rules, dtype_bytes=None) -> int:
    """Bytes one device holds of a tree of annotated variables, sharded by the rules
    (`dtype_bytes`: per element, instead of each variable's own)."""
    mesh = jax.sharding.AbstractMesh(
        tuple(mesh_sizes[a] for a in sharding_lib.MESH_AXES), sharding_lib.MESH_AXES
    )
    total = 0
    for variable in jax.tree.leaves(abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        logical = (
            variable.get_metadata().get("out_sharding")
            if isinstance(variable, nnx.Variable)
            else None
        )
        spec = sharding_lib._fit_spec_to_shape(
            sharding_lib.logical_to_mesh_spec(logical, rules), value.shape, mesh
        )
        shards = 1
        for entry in spec:
            for axis in () if entry is None else (entry,) if isinstance(entry, str) else entry:
                shards *= mesh_sizes[axis]
        itemsize = dtype_bytes or np.dtype(value.dtype).itemsize
        total += math.prod(value.shape) // shards * itemsize
    return total


def activation_bytes(
    config: ml_collections.ConfigDict, model_config: dit_lib.DiTConfig, mesh_sizes: dict[str, int]
) -> dict[str, float]:
    """Estimated activation bytes per device for one step.

    N tokens per sample (split over the `sequence` axis), b samples per device, c bytes per
    compute element, D width, Dff FFN width, G blocks per scan group:
      carry per saved scan step  b N D 4         (the residual stream is fp32, as in Wan; remat
                                                  keeps one per group of G blocks)
      one block's live tensors   b N (12 D + 3 Dff) c  (norms, q k v o, attention output, FFN)
      attention scores (only with the plain XLA backend; flash backends keep O(N)):
                                 b heads N_q N_k 4  (fp32 softmax), N_k = N (pano) or N/4 (subregion)
      k, v gathered over the sequence axis (if > 1), and their gradients in the backward:
                                 4 b N_all D c  (N_all: every token of a sample with
                                                sequence_parallel "gather", and "ring", whose
                                                backward keeps every key block; "ulysses" holds
                                                q, k, v, o of all tokens for 1/sequence of the
                                                heads: N_all = N)
    remat "full": all carries + one group recomputed; "save_dots": all carries and the matmul
    outputs of every block (~ b N (6 D + 2 Dff) c per block); "none": every block's live tensors.
    The scores term is a floor: the compiled CPU program of configs/wan14b.py with the xla
    backend holds ~3.5 fp32 score-sized buffers at its backward peak (logits, probabilities,
    their gradients), so `--method compiled` is the number to trust for the xla backend.
    """
    data = config.data
    spatial, temporal = config_lib.autoencoder_factors(config)
    height, width = data_config_lib.canvas_hw(data)  # the map's, or another representation's frames
    latent = (1 + (data.num_frames - 1) // temporal, height // spatial, width // spatial)
    pt, ph, pw = model_config.patch_size
    tokens = (latent[0] // pt) * (latent[1] // ph) * (latent[2] // pw)
    n = tokens / mesh_sizes["sequence"]
    b = data.batch_size / (mesh_sizes["data"] * mesh_sizes["fsdp"])
    c = np.dtype(model_config.dtype).itemsize
    d, dff = model_config.dim, model_config.ffn_dim
    layers = model_config.num_layers
    group = len(model_config.scan_group)
    block = b * n * (12 * d + 3 * dff) * c
    if mesh_sizes["sequence"] > 1:
        block += 4 * b * _attended_tokens(model_config, tokens, n) * d / mesh_sizes["tensor"] * c
    scores = 0.0
    if model_config.attention_backend == "xla":
        heads = model_config.num_heads / mesh_sizes["tensor"]
        pano = b * heads * n * tokens * 4
        scores = pano if dit_lib.BlockKind.PANO in model_config.scan_group else pano / 4
    policy = model_config.remat_policy
    carries = layers / group * b * n * d * 4
    if policy == "full":
        total = carries + group * block + scores
    elif policy in ("save_dots", "save_all_dots"):
        total = carries + layers * b * n * (6 * d + 2 * dff) * c + block + scores
    else:
        total = layers * (block + scores)
    return {"tokens_per_sample": tokens, "samples_per_device": b, "activations": total}


def _attended_tokens(model_config: dit_lib.DiTConfig, tokens: int, local: float) -> float:
    """Tokens whose keys and values a device holds in self-attention (`activation_bytes`)."""
    if model_config.sequence_parallel == attention_lib.SequenceParallel.ULYSSES:
        return local
    return tokens


def training_plan(
    config: ml_collections.ConfigDict,
    mesh_sizes: dict[str, int],
    model_config: dit_lib.DiTConfig | None = None,
) -> dict[str, float]:
    """Per-device bytes of one training step on a mesh of `mesh_sizes` (every axis of
    `sharding.MESH_AXES`): parameters, optimizer state (AdamW moments, EMA), gradients,
    activations, and their total; plus the parameter counts and tokens per sample.
    A LoRA run (config.lora) keeps optimizer state and gradients of its trainable parameters
    only, and its frozen base with the matmul kernels in the compute dtype (`models.lora`); the
    adapters' own activations (b N rank per adapter) are left out, under 1% at rank 64.
    `model_config`: the run's DiTConfig where the caller holds it (default: `build.dit_config`)."""
    model_config = build.dit_config(config) if model_config is None else model_config
    rules = tuple(tuple(r) for r in config.sharding_rules)
    model = dit_lib.abstract_model(model_config)
    frozen_bytes, frozen_count = 0, 0
    if config_lib.lora_enabled(config):
        _, params, base = lora_lib.split_params(model, bool(config.lora.train_norms))
        base = lora_lib.base_dtypes(base, model_config.dtype)
        frozen_bytes, frozen_count = sharded_bytes(base, mesh_sizes, rules), count_params(base)
    else:
        _, params = nnx.split(model, nnx.Param)
    param_bytes = sharded_bytes(params, mesh_sizes, rules)
    mu_bytes = np.dtype(config.optim.mu_dtype).itemsize
    opt_bytes = sharded_bytes(params, mesh_sizes, rules, mu_bytes) + sharded_bytes(
        params, mesh_sizes, rules, 4
    )
    if config.optim.ema_decay > 0:
        opt_bytes += param_bytes
    plan = {
        "parameters": count_params(params) + frozen_count,
        "trainable_parameters": count_params(params),
        "param_bytes": param_bytes + frozen_bytes,
        "optimizer_bytes": opt_bytes,
        "gradient_bytes": sharded_bytes(params, mesh_sizes, rules, 4),
        **activation_bytes(config, model_config, mesh_sizes),
    }
    plan["total_bytes"] = (
        plan["param_bytes"] + plan["optimizer_bytes"] + plan["gradient_bytes"] + plan["activations"]
    )
    return plan


# Sequence-axis sizes a mesh search tries: powers of 2 (the tokens of a 2K clip, 83,200, split
# evenly; a head-split attention needs them to divide the heads, which `smallest_mesh` checks).
SEQUENCE_SIZES = (1, 2, 4, 8, 16)


def smallest_mesh(
    config: ml_collections.ConfigDict,
    device_counts: tuple[int, ...],
    budget_bytes: float,
    headroom_bytes: float = 0.0,
    model_config: dit_lib.DiTConfig | None = None,
) -> list[dict]:
    """The training plans of every mesh tried, smallest device count first: for each count of
    `device_counts`, fsdp x sequence over all of them (data 1, tensor 1) with one sample per
    fsdp group (`data.batch_size` = fsdp), sequence from `SEQUENCE_SIZES` dividing both the
    devices and the DiT's heads. Each row: the mesh, the batch, the plan, and whether
    plan + `headroom_bytes` (what compiled programs hold beyond the plan, BENCHMARKS.md) fits
    `budget_bytes`. The first row that fits is the smallest mesh that trains the config."""
    model_config = build.dit_config(config) if model_config is None else model_config
    rows = []
    for devices in sorted(device_counts):
        for sequence in SEQUENCE_SIZES:
            if devices % sequence or model_config.num_heads % sequence:
                continue
            sizes = {"data": 1, "fsdp": devices // sequence, "sequence": sequence, "tensor": 1}
            trial = config.copy_and_resolve_references()
            trial.data.batch_size = sizes["fsdp"]
            plan = training_plan(trial, sizes, model_config)
            fits = plan["total_bytes"] + headroom_bytes <= budget_bytes
            rows.append({"devices": devices, "mesh": sizes, "batch_size": sizes["fsdp"],
                         "plan": plan, "fits": fits})  # fmt: skip
    return rows
