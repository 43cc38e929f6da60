"""LoRA on the Wan DiT: which parameters train, the frozen base, and merging adapters.

The adapters themselves are `layers.LoRALinear` (A, B as `nnx.LoRAParam`), placed by
`DiTConfig.lora_rank` / `lora_targets`. They sit inside the scanned blocks, so they are stacked
along the same leading "layers" axis as every block parameter and carry the kernel's logical
axes: the sharding rules place them as they place the kernels.

A LoRA run splits the DiT's parameters in two (`split_params`):
  trainable  the adapters, the patch embedding (its condition channels, zero in the converted
             Wan, must learn the condition) and, with `train_norms`, the norms and modulation;
             fp32 master weights with optimizer state;
  base       everything else, frozen: no gradient, no optimizer state, and its matmul kernels
             held in the compute dtype (`base_dtypes`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import layers

# Trained in full in a LoRA run: the inflated patch embedding (16 -> 33 channels).
PATCH_EMBEDDING = ("patch_kernel", "patch_bias")
# Trained in full with `train_norms`: the norms' scales and the blocks' and head's modulation.
NORMS_AND_MODULATION = ("norm_q", "norm_k", "cross_norm", "modulation", "head_modulation")
# The time embedding runs in fp32 (as in Wan): its frozen kernels keep their stored dtype.
FP32_LAYERS = ("time_in", "time_out", "time_projection")


def trainable_filter(train_norms: bool = False) -> nnx.filterlib.Filter:
    """The nnx filter of a LoRA run's trainable parameters (see the module docstring)."""
    names = PATCH_EMBEDDING + (NORMS_AND_MODULATION if train_norms else ())
    return nnx.Any(nnx.LoRAParam, *(nnx.PathContains(name) for name in names))


def split_params(
    model: dit_lib.WanDiT, train_norms: bool = False
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable, base) of a LoRA model (abstract or concrete);
    `nnx.merge(graphdef, trainable, base)` puts it back together."""
    return nnx.split(model, trainable_filter(train_norms), nnx.Param)


def _is_matmul_kernel(path: tuple) -> bool:
    return path[-1] == "kernel" and path[0] not in FP32_LAYERS


def base_dtypes(base: nnx.State, dtype: Any) -> nnx.State:
    """`base` with its matmul kernels (all but the fp32 time embedding's) cast to `dtype`
    (`jax.ShapeDtypeStruct`s stay abstract).

    The compute dtype: such a kernel is cast to it at every matmul anyway, so a bf16 copy
    computes bit for bit what the fp32 one did, in half the memory. Norms, biases, modulation
    and the time embedding (a few percent of the weights) keep their own dtype."""
    dtype = jnp.dtype(dtype)

    def cast(path: tuple, variable: nnx.Variable) -> nnx.Variable:
        value = variable.get_value()
        if not _is_matmul_kernel(path) or value.dtype == dtype:
            return variable
        if isinstance(value, jax.ShapeDtypeStruct):
            value = jax.ShapeDtypeStruct(value.shape, dtype, sharding=value.sharding)
        else:
            value = value.astype(dtype)
        return variable.replace(value)

    flat = [(path, cast(path, variable)) for path, variable in base.flat_state()]
    return nnx.from_flat_state(flat)


def without_lora(config: dit_lib.DiTConfig) -> dit_lib.DiTConfig:
    """The config of the same DiT without adapters (its base, or the merged model)."""
    return dataclasses.replace(config, lora_rank=0, lora_alpha=0.0, lora_scale=1.0)


def merge_lora(model: dit_lib.WanDiT) -> dit_lib.WanDiT:
    """The same DiT with each adapter folded into its kernel, W + scale A B (computed in fp32,
    stored in the wider of the kernel's and the adapter's dtypes: a bf16 frozen kernel merged
    with fp32 adapters is fp32), and no adapters: `without_lora(config)`."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, layers.LoRALinear):
            continue
        node = pure
        for key in path:
            node = node[key]
        kernel = node["kernel"]
        a, b = node.pop("lora_a"), node.pop("lora_b")
        delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))
        dtype = jnp.promote_types(kernel.dtype, a.dtype)
        node["kernel"] = (kernel.astype(jnp.float32) + module.lora_scale * delta).astype(dtype)
    merged = without_lora(model.config)
    graphdef, abstract = nnx.split(dit_lib.abstract_model(merged), nnx.Param)
    nnx.replace_by_pure_dict(abstract, pure)
    return nnx.merge(graphdef, abstract)
