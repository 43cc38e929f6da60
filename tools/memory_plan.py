"""Per-device memory of a training config: parameters, optimizer state, gradients, activations.

    python tools/memory_plan.py --config configs/wan14b.py [--devices 8] [--hbm_gb 80]
    python tools/memory_plan.py --config configs/wan1_3b.py --method compiled

--method analytic (default; needs no devices, any model size): parameter, optimizer-state and
  gradient bytes are exact, leaf by leaf, from the model's abstract shapes and the sharding rules
  on a mesh of the config's shape; activations are an estimate (formula in `activation_bytes`).
--method compiled: lowers and compiles the real train step on abstract inputs over simulated CPU
  devices and prints XLA's memory analysis (arguments = state + batch + frozen encoder weights,
  temporaries = activations and gradients, the autoencoder's pass included). The frozen encoders
  are abstract (their sizes from the config, or from a checkpoint's config.json if present), so
  no checkpoint is needed and any config compiles; CPU compile time grows with the model
  (minutes for 14B). On CPU only the 'xla' attention backend compiles: a config naming cudnn or
  splash is compiled with 'xla', said under the table, and its temporaries then include the
  attention scores a flash backend never allocates (`activation_bytes` estimates them).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

GIB = 1024**3


def load_config(spec: str):
    # Imported here: jax must not initialise before main() sets the simulated device count.
    from viewpoint_jax.config import load_config_file

    return load_config_file(spec)


def _resolved_mesh(config, devices: int) -> dict[str, int]:
    from viewpoint_jax.config import mesh_shape

    return mesh_shape(config, devices)


def _sharded_bytes(abstract_tree, mesh_sizes: dict[str, int], rules, dtype_bytes=None) -> int:
    """Bytes one device holds of a tree of annotated variables, sharded by the rules."""
    import jax
    import numpy as np
    from flax import nnx

    from viewpoint_jax import sharding as sharding_lib

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


def activation_bytes(config, model_config, mesh_sizes: dict[str, int]) -> dict[str, float]:
    """Estimated activation bytes per device for one step.

    N tokens per sample (split over the `sequence` axis), b samples per device, c bytes per
    compute element, D width, Dff FFN width, G blocks per scan group:
      carry per saved scan step  b N D 4         (the residual stream is fp32, as in Wan; remat
                                                  keeps one per group of G blocks)
      one block's live tensors   b N (12 D + 3 Dff) c  (norms, q k v o, attention output, FFN)
      attention scores (only with the plain XLA backend; flash backends keep O(N)):
                                 b heads N_q N_k 4  (fp32 softmax), N_k = N (pano) or N/4 (subregion)
    remat "full": all carries + one group recomputed; "save_dots": all carries and the matmul
    outputs of every block (~ b N (6 D + 2 Dff) c per block); "none": every block's live tensors.
    The scores term is a floor: the compiled CPU program of configs/wan14b.py with the xla
    backend holds ~3.5 fp32 score-sized buffers at its backward peak (logits, probabilities,
    their gradients), so `--method compiled` is the number to trust for the xla backend.
    """
    import numpy as np

    from viewpoint_jax.models import dit as dit_lib

    data = config.data
    spatial = 8 if config.autoencoder.kind == "wan_vae" else int(config.autoencoder.factor)
    temporal = 4 if config.autoencoder.kind == "wan_vae" else 1
    latent = (
        1 + (data.num_frames - 1) // temporal,
        data.map_size // spatial,
        data.map_size // spatial,
    )
    pt, ph, pw = model_config.patch_size
    tokens = (latent[0] // pt) * (latent[1] // ph) * (latent[2] // pw)
    n = tokens / mesh_sizes["sequence"]
    b = data.batch_size / (mesh_sizes["data"] * mesh_sizes["fsdp"])
    c = np.dtype(model_config.dtype).itemsize
    d, dff = model_config.dim, model_config.ffn_dim
    layers = model_config.num_layers
    group = len(model_config.scan_group)
    block = b * n * (12 * d + 3 * dff) * c
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


def analytic_plan(config, devices: int) -> dict[str, float]:
    import jax
    import numpy as np
    from flax import nnx

    from viewpoint_jax import build
    from viewpoint_jax.models import dit as dit_lib

    model_config = build.dit_config(config)
    mesh_sizes = _resolved_mesh(config, devices)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    _, params = nnx.split(dit_lib.abstract_model(model_config), nnx.Param)
    param_bytes = _sharded_bytes(params, mesh_sizes, rules)
    mu_bytes = np.dtype(config.optim.mu_dtype).itemsize
    opt_bytes = _sharded_bytes(params, mesh_sizes, rules, mu_bytes) + _sharded_bytes(
        params, mesh_sizes, rules, 4
    )
    if config.optim.ema_decay > 0:
        opt_bytes += param_bytes
    plan = {
        "parameters": dit_lib.count_params(params),
        "param_bytes": param_bytes,
        "optimizer_bytes": opt_bytes,
        "gradient_bytes": _sharded_bytes(params, mesh_sizes, rules, 4),
        **activation_bytes(config, model_config, mesh_sizes),
    }
    del jax
    plan["total_bytes"] = (
        plan["param_bytes"] + plan["optimizer_bytes"] + plan["gradient_bytes"] + plan["activations"]
    )
    return plan


def compile_attention_backend(config) -> tuple[str, str | None]:
    """The attention backend the compiled plan can use here, and a note when it is not the
    config's: cudnn (GPU) and splash (TPU) do not compile on CPU, so CPU plans use 'xla'."""
    import jax

    from viewpoint_jax import build

    named = build.dit_config(config).attention_backend
    runs_here = {"xla": True, "cudnn": "gpu", "splash": "tpu"}.get(named)
    if runs_here is True or runs_here == jax.default_backend():
        return named, None
    return "xla", (
        f"attention: compiled with the 'xla' backend (the config names {named!r}, which does not "
        f"compile on {jax.default_backend()}); temp_bytes include the xla backend's fp32 attention "
        f"scores, which a flash backend does not allocate"
    )


def abstract_train_step(config, mesh, rules):
    """The train step as `train.make_trainer` jits it, with abstract encoders (no checkpoint is
    read, no weight allocated, so any model size lowers on CPU), and its abstract arguments
    (state, batch, frozen encoder weights) as sharded shapes: `step_fn.lower(*arguments)`.
    """
    import jax
    import jax.numpy as jnp

    from viewpoint_jax import build, train
    from viewpoint_jax.models import text_encoder as text_lib
    from viewpoint_jax.models.autoencoder import latent_shape

    trainer = train.make_trainer(
        config,
        mesh,
        rules,
        autoencoder=build.abstract_autoencoder(config),
        text_encoder=text_lib.TextEncoder(build.abstract_text_model(config), None),
    )
    data, b = config.data, config.data.batch_size
    m, f = data.map_size, data.num_frames
    if data.precomputed_latents:
        latent = latent_shape(trainer.autoencoder, (b, f, m, m, 3))
        shapes = {"latents": latent, "condition_latents": latent, "latent_mask": (*latent[:4], 1)}
    else:
        shapes = {"target_map": (b, f, m, m, 3), "condition_map": (b, f, m, m, 3)}
        shapes["condition_mask"] = (b, f, m, m, 1)
    batch = {k: (v, jnp.float32) for k, v in shapes.items()}
    length = int(config.text_encoder.max_length)
    if config.text_encoder.precompute:
        batch["context"] = ((b, length, trainer.model_config.text_dim), jnp.float32)
    else:
        batch["ids"] = batch["ids_mask"] = ((b, length), jnp.int32)
    batch = {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=trainer.batch_sharding)
        for k, (shape, dtype) in batch.items()
    }
    frozen = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        trainer.frozen_arrays,
    )
    return trainer.step_fn, (trainer.abstract_state_with_shardings(), batch, frozen)


def compiled_notes(config, devices: int) -> tuple[str, ...]:
    """What the compiled plan compiled with: its attention backend and, for 'xla', the analytic
    estimate of the attention scores its temporaries include."""
    from viewpoint_jax import build

    backend, note = compile_attention_backend(config)
    if backend != "xla":
        return (f"attention: compiled with the config's {backend!r} backend",)
    notes = [note or "attention: compiled with the config's 'xla' backend"]
    model_config = build.dit_config(config)
    mesh_sizes = _resolved_mesh(config, devices)
    with_scores = dataclasses.replace(model_config, attention_backend="xla")
    without = dataclasses.replace(model_config, attention_backend="cudnn")
    scores = (
        activation_bytes(config, with_scores, mesh_sizes)["activations"]
        - activation_bytes(config, without, mesh_sizes)["activations"]
    )
    notes.append(
        f"xla attention: one fp32 score tensor is {scores / GIB:.2f} GiB (the analytic floor); "
        "the backward keeps several (logits, probabilities, their gradients) in temp_bytes"
    )
    return tuple(notes)


def compile_train_step(config, devices: int):
    """The train step compiled for `devices` (simulated) devices with abstract encoders (see
    `abstract_train_step`), on an attention backend this platform compiles
    (`compile_attention_backend`). Returns (jax.stages.Compiled, its abstract arguments)."""
    import time

    import jax

    from viewpoint_jax import sharding as sharding_lib

    if jax.device_count() < devices:
        raise ValueError(f"{devices} devices asked for, {jax.device_count()} simulated")
    backend, note = compile_attention_backend(config)
    if note:
        config = config.copy_and_resolve_references()
        config.model.attention_backend = backend
    mesh_sizes = _resolved_mesh(config, devices)
    batch_shards = mesh_sizes["data"] * mesh_sizes["fsdp"]
    if config.data.batch_size % batch_shards:
        raise ValueError(
            f"config.data.batch_size: {config.data.batch_size} must be divisible by the mesh's "
            f"data x fsdp = {batch_shards} (--devices {devices})"
        )
    mesh = sharding_lib.make_mesh(mesh_sizes, jax.devices()[:devices])
    rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.sharding_rules)
    start = time.perf_counter()
    step, arguments = abstract_train_step(config, mesh, rules)
    lowered = step.lower(*arguments)
    print(f"lowered in {time.perf_counter() - start:.0f} s, compiling", file=sys.stderr)
    compiled = lowered.compile()
    print(f"compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return compiled, arguments


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s (or arrays)."""
    import jax
    import numpy as np

    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def memory_of(compiled, arguments) -> dict[str, int]:
    """XLA's memory analysis of the compiled step, per device: arguments (state, batch, frozen
    encoder weights), outputs, the donated state aliased between them, temporaries; plus the
    frozen weights a run keeps on device that the step never reads (jit drops them from its
    arguments: the VAE decoder, used by previews only).
    total = arguments + outputs - aliased + temporaries + unread weights."""
    analysis = compiled.memory_analysis()
    unread = per_device_bytes(arguments) - analysis.argument_size_in_bytes
    return {
        "argument_bytes": analysis.argument_size_in_bytes,
        "output_bytes": analysis.output_size_in_bytes,
        "alias_bytes": analysis.alias_size_in_bytes,
        "temp_bytes": analysis.temp_size_in_bytes,
        "unread_weight_bytes": unread,
        "total_bytes": analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
        + unread,
    }


def compiled_plan(config, devices: int) -> dict[str, int]:
    """`memory_of` the train step compiled for `devices` simulated devices."""
    return memory_of(*compile_train_step(config, devices))


def format_plan(
    plan: dict, method: str, devices: int, hbm_gb: float, notes: tuple[str, ...] = ()
) -> str:
    lines = [f"| {method}, per device of {devices} | GiB |", "|---|---:|"]
    for key, value in plan.items():
        if key.endswith("_bytes") or key == "activations":
            lines.append(f"| {key} | {value / GIB:.2f} |")
        else:
            lines.append(f"| {key} | {value:,.0f} |" if value >= 100 else f"| {key} | {value:g} |")
    fits = plan["total_bytes"] <= hbm_gb * 1e9
    lines.append(
        f"\n{'fits' if fits else 'does NOT fit'}: {plan['total_bytes'] / 1e9:.1f} GB of "
        f"{hbm_gb:g} GB per device"
    )
    lines.extend(notes)
    return "\n".join(lines)


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("config", None, "configs/*.py[:arg]", required=True)
    flags.DEFINE_integer("devices", 8, "devices of the mesh")
    flags.DEFINE_float("hbm_gb", 80.0, "memory per device, GB")
    flags.DEFINE_enum("method", "analytic", ["analytic", "compiled"], "how the plan is made")


def main(argv: list[str]) -> int:
    from absl import flags

    from viewpoint_jax.cli import refuse_positional

    refuse_positional(argv)
    args = flags.FLAGS
    if args.method == "compiled":  # simulated devices must exist before jax starts
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        xla_flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in xla_flags:
            os.environ["XLA_FLAGS"] = (
                f"{xla_flags} --xla_force_host_platform_device_count={args.devices}"
            )
    config = load_config(args.config)
    if args.method == "analytic":
        plan, notes = analytic_plan(config, args.devices), ()
    else:
        plan, notes = compiled_plan(config, args.devices), compiled_notes(config, args.devices)
    print(format_plan(plan, args.method, args.devices, args.hbm_gb, notes))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from viewpoint_jax.cli import run

    run(main, define_flags)
