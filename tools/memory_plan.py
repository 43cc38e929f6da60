"""Per-device memory of a training config: parameters, optimizer state, gradients, activations.

    python tools/memory_plan.py --config configs/wan14b.py [--devices 8] [--hbm_gb 80]
    python tools/memory_plan.py --config configs/wan1_3b.py --method compiled
    python tools/memory_plan.py --config configs/wan14b.py --mode sample --devices 1,2,4,8
    python tools/memory_plan.py --config configs/wan.py:14b_lora --devices 1 --batch_size 1

--mode sample: the memory of generating one video (`viewpoint_jax.sample`) on the sampling
  mesh (`generation.models.sampling_mesh`: FSDP over all devices) with `--dtype` weights, a row
  per device count of `--devices`; analytic: `sample_plan` (its VAE decode compiled over that
  many simulated devices, `vae_decode_bytes`); compiled (`--map_size` to shrink the xla
  backend's attention scores): `compiled_sample_plan`.

--search (train mode, analytic): the smallest mesh that trains the config: for each device
  count of `--devices` (e.g. 4,8,16,32), fsdp x sequence over all of them with one sample per
  fsdp group, a row each, "fits" when the plan plus `--headroom_gib` (what the compiled step
  holds beyond the plan; BENCHMARKS.md "2K") is within `--hbm_gb` (`memory.smallest_mesh`):

    python tools/memory_plan.py --config configs/wan.py:14b_2k --search --devices 4,8,16 \
        --hbm_gb 102.8 --headroom_gib 26

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
    from viewpoint_jax.setup.config import load_config_file

    return load_config_file(spec)


def _resolved_mesh(config, devices: int) -> dict[str, int]:
    from viewpoint_jax.setup.config import mesh_shape

    return mesh_shape(config, devices)


def _sharded_bytes(abstract_tree, mesh_sizes: dict[str, int], rules, dtype_bytes=None) -> int:
    from viewpoint_jax.training import memory

    return memory.sharded_bytes(abstract_tree, mesh_sizes, rules, dtype_bytes)


def activation_bytes(config, model_config, mesh_sizes: dict[str, int]) -> dict[str, float]:
    """`viewpoint_jax.training.memory.activation_bytes` (its docstring has the formula)."""
    from viewpoint_jax.training import memory

    return memory.activation_bytes(config, model_config, mesh_sizes)


def analytic_plan(config, devices: int) -> dict[str, float]:
    """`viewpoint_jax.training.memory.training_plan` on the config's mesh over `devices`."""
    from viewpoint_jax.training import memory

    return memory.training_plan(config, _resolved_mesh(config, devices))


# --- Sampling -----------------------------------------------------------------------------------


def sample_activation_bytes(model_config, tokens: int, mesh_sizes: dict[str, int]) -> dict:
    """Estimated live bytes per device of one DiT forward at inference (no gradients, so one
    block's tensors at a time, never the whole depth's) on the 2-sample guidance batch.

    b = 2 / (the part of data x fsdp dividing 2; `sharding.named_sharding` drops the rest, so
    fsdp 4 and 8 run the whole batch on every device), n = tokens / sequence, t = tensor,
    c = compute bytes, D width, Dff FFN width:
      residual stream in and out, fp32 norm temporaries   3 b n D 4
      modulated input, q, k, v, attention output           5 b n D/t c
      FFN hidden before and after the GELU                 2 b n Dff/t c
      k, v all-gathered over the sequence axis (if > 1)    2 b N D/t c
      attention scores, only for the 'xla' backend (flash backends keep O(N)):
                                                           b heads/t n N 4 (fp32 softmax)
    """
    import numpy as np

    batch_shards = 1
    for axis in ("data", "fsdp"):  # as `sharding._fit_spec_to_shape` fits the batch axes
        if 2 % (batch_shards * mesh_sizes[axis]) == 0:
            batch_shards *= mesh_sizes[axis]
    b = 2 / batch_shards
    sequence, tensor = mesh_sizes["sequence"], mesh_sizes["tensor"]
    n = tokens / sequence
    c = np.dtype(model_config.dtype).itemsize
    d, dff = model_config.dim, model_config.ffn_dim
    live = b * n * (3 * d * 4 + 5 * d / tensor * c + 2 * dff / tensor * c)
    if sequence > 1:
        live += 2 * b * tokens * d / tensor * c
    scores = 0.0
    if model_config.attention_backend == "xla":
        scores = b * model_config.num_heads / tensor * n * tokens * 4
    return {"samples_per_device": b, "activations": live, "attention_scores": scores}


def vae_decode_bytes(
    config, latent: tuple[int, ...], devices: int = 1, autoencoder=None
) -> dict[str, int]:
    """XLA's memory analysis, per device, of the autoencoder's decode of one `latent` as
    sampling runs it (`decoding.decode_latents`: tiles of `decoding.DECODE_TILE` latent pixels,
    one per device at a time, spread over `devices` simulated devices, the weights replicated).
    Compiled here on the CPU from abstract weights (~1 min for the Wan VAE at 640 / 49 frames);
    `autoencoder`: the config's abstract one where the caller holds it. Returns the weights,
    the temporaries (one tile's activations, the tiles of a step gathered, the blended video)
    and the output (the map video)."""
    import jax
    import numpy as np

    from viewpoint_jax.generation.models import sampling_mesh
    from viewpoint_jax.studies import tpu_compile

    if jax.device_count() < devices:
        raise ValueError(f"{devices} devices asked for, {jax.device_count()} simulated")
    mesh = sampling_mesh(jax.devices()[:devices])
    decode, (arrays, z) = tpu_compile.abstract_decode(config, mesh, latent, autoencoder)
    compiled = decode.lower(arrays, z).compile()
    analysis = compiled.memory_analysis()
    weights = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(arrays))
    return {
        "weights": weights,
        "temp": analysis.temp_size_in_bytes,
        "output": analysis.output_size_in_bytes,
    }


def sample_plan(
    config,
    devices: int,
    dtype: str = "bfloat16",
    vae: dict | None = None,
    *,
    model_config=None,
    latent: tuple[int, ...] | None = None,
    sequence: int = 1,
) -> dict:
    """Per-device bytes of generating one video of `config.data`'s size on `devices` devices
    with the sampling mesh (FSDP over all of them; with `sequence` > 1, `sample --mesh
    fsdp=devices/sequence,sequence=sequence`: the tokens split, the weights over the axes the
    config's rules name) and `dtype` DiT weights. `model_config` (the
    DiT's, in `dtype`) and `latent` (`models.latent_shape`): where the caller holds them.

    Three phases, and the peak is the largest:
      encode  DiT weights + text encoder weights (both sharded; activations of 512 tokens are
              negligible); `Models.release_text_encoder()` then frees the text encoder;
      denoise DiT weights + one scan group's weights all-gathered over fsdp, twice (the group
              in use and the next one being gathered) + `sample_activation_bytes`;
      decode  DiT weights + the autoencoder's tiled decode spread over the devices
              (`vae_decode_bytes`: weights, temporaries, the map video) + the ERP video (fp32).
    The sampler's own state (noise, scheduler history, conditions, text context) is a few
    latent-sized arrays: tens of MB, left out.
    """
    import dataclasses

    import jax
    import numpy as np
    from flax import nnx

    from viewpoint_jax.generation.models import latent_shape
    from viewpoint_jax.models import dit as dit_lib
    from viewpoint_jax.setup import build
    from viewpoint_jax.setup import config as config_lib

    if model_config is None:
        model_config = build.dit_config(config)
        model_config = dataclasses.replace(model_config, dtype=dtype, param_dtype=dtype)
    if devices % sequence:
        raise ValueError(f"sequence {sequence} does not divide {devices} devices")
    # sampling_mesh, or --mesh fsdp=devices/sequence,sequence=sequence
    mesh_sizes = {"data": 1, "fsdp": devices // sequence, "sequence": sequence, "tensor": 1}
    rules = config_lib.logical_rules(config)
    _, params = nnx.split(dit_lib.abstract_model(model_config), nnx.Param)
    weights = _sharded_bytes(params, mesh_sizes, rules)
    text_weights = _sharded_bytes(
        nnx.state(build.abstract_text_model(config), nnx.Param), mesh_sizes, rules
    )
    gathered = 0.0
    if devices > 1:
        group = len(model_config.scan_group)
        blocks = nnx.state(dit_lib.abstract_model(model_config).blocks, nnx.Param)
        block_bytes = sum(
            math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(blocks)
        )
        gathered = 2 * group * block_bytes / model_config.num_layers
    # One abstract autoencoder for the latent's shape and the decode.
    autoencoder = build.abstract_autoencoder(config) if latent is None or vae is None else None
    if latent is None:
        latent = latent_shape(config, autoencoder=autoencoder)
    pt, ph, pw = model_config.patch_size
    tokens = (latent[1] // pt) * (latent[2] // ph) * (latent[3] // pw)
    activations = sample_activation_bytes(model_config, tokens, mesh_sizes)
    if vae is None:
        vae = vae_decode_bytes(config, latent, devices, autoencoder)
    data = config.data
    erp = data.num_frames * data.erp_height * data.erp_width * 3 * 4
    phases = {
        "encode_bytes": weights + text_weights,
        "denoise_bytes": weights
        + gathered
        + activations["activations"]
        + activations["attention_scores"],
        "decode_bytes": weights + vae["weights"] + vae["temp"] + vae["output"] + erp,
    }
    return {
        "tokens": tokens,
        "dit_weight_bytes": weights,
        "text_encoder_weight_bytes": text_weights,
        "gathered_weight_bytes": gathered,
        "activation_bytes": activations["activations"],
        "attention_score_bytes": activations["attention_scores"],
        "vae_decode_bytes": vae["weights"] + vae["temp"] + vae["output"] + erp,
        **phases,
        "peak_bytes": max(phases.values()),
    }


def compiled_sample_plan(config, devices: int, dtype: str = "bfloat16") -> dict[str, float]:
    """XLA's memory analysis of the compiled sampling loop (`denoising.sample_latents`, the DiT
    forward on the guidance batch of 2 at `config.data`'s size) on `devices` simulated devices of
    the sampling mesh, weights abstract (`dtype`, sharded by the config's rules), per device;
    beside the analytic terms it checks (weights; gathered group + activations + scores).

    On CPU only the 'xla' attention backend compiles (`compile_attention_backend`), so the
    temporaries include its fp32 attention scores; a reduced size (`--map_size`) keeps them small
    enough to compare the rest with `sample_activation_bytes`.
    """
    import dataclasses

    import jax

    from viewpoint_jax.generation.models import latent_shape, sampling_mesh
    from viewpoint_jax.setup import build
    from viewpoint_jax.studies import tpu_compile

    if jax.device_count() < devices:
        raise ValueError(f"{devices} devices asked for, {jax.device_count()} simulated")
    model_config = build.dit_config(config)
    backend, _ = compile_attention_backend(config, model_config)
    model_config = dataclasses.replace(
        model_config, dtype=dtype, param_dtype=dtype, attention_backend=backend
    )
    mesh = sampling_mesh(jax.devices()[:devices])
    latent = latent_shape(config)
    function, arguments, keywords = tpu_compile.abstract_sampler(config, mesh, model_config)
    compiled = function.lower(*arguments, **keywords).compile()
    analysis = compiled.memory_analysis()
    # The analytic terms of the same DiT (its weights and activations do not depend on the
    # attention backend) and latent.
    no_vae = {"weights": 0, "temp": 0, "output": 0}
    analytic = sample_plan(config, devices, dtype, no_vae, model_config=model_config, latent=latent)
    xla_model = dataclasses.replace(model_config, attention_backend="xla")
    pt, ph, pw = model_config.patch_size
    tokens = (latent[1] // pt) * (latent[2] // ph) * (latent[3] // pw)
    mesh_sizes = {"data": 1, "fsdp": devices, "sequence": 1, "tensor": 1}
    scores = sample_activation_bytes(xla_model, tokens, mesh_sizes)["attention_scores"]
    return {
        "tokens": tokens,
        "argument_bytes": analysis.argument_size_in_bytes,
        "temp_bytes": analysis.temp_size_in_bytes,
        "analytic_weight_bytes": analytic["dit_weight_bytes"],
        "analytic_temp_bytes": analytic["gathered_weight_bytes"]
        + analytic["activation_bytes"]
        + scores,
    }


def format_sample_table(config_name: str, dtype: str, plans: dict[int, dict], hbm_gb: float):
    """Markdown: one row per device count, GiB per device, and whether the peak fits."""
    columns = [
        ("DiT weights", "dit_weight_bytes"),
        ("text enc. (released)", "text_encoder_weight_bytes"),
        ("gathered group", "gathered_weight_bytes"),
        ("activations", "activation_bytes"),
        ("xla scores", "attention_score_bytes"),
        ("VAE decode", "vae_decode_bytes"),
        ("encode", "encode_bytes"),
        ("denoise", "denoise_bytes"),
        ("decode", "decode_bytes"),
        ("peak", "peak_bytes"),
    ]
    lines = [
        f"{config_name}, {dtype} weights, GiB per device "
        f"({next(iter(plans.values()))['tokens']} tokens, CFG batch 2):",
        "",
        "| devices | " + " | ".join(name for name, _ in columns) + f" | fits {hbm_gb:g} GB |",
        "|---:|" + "---:|" * len(columns) + "---|",
    ]
    for devices, plan in plans.items():
        cells = [f"{plan[key] / GIB:.2f}" for _, key in columns]
        fits = "yes" if plan["peak_bytes"] <= hbm_gb * 1e9 else "no"
        lines.append(f"| {devices} | " + " | ".join(cells) + f" | {fits} |")
    return "\n".join(lines)


def compile_attention_backend(config, model_config=None) -> tuple[str, str | None]:
    """The attention backend the compiled plan can use here, and a note when it is not the
    config's: cudnn (GPU) and splash (TPU) do not compile on CPU, so CPU plans use 'xla'.
    `model_config`: the config's DiT config, where the caller holds it."""
    import jax

    from viewpoint_jax.setup import build

    model_config = build.dit_config(config) if model_config is None else model_config
    named = model_config.attention_backend
    runs_here = {"xla": True, "cudnn": "gpu", "splash": "tpu"}.get(named)
    if runs_here is True or runs_here == jax.default_backend():
        return named, None
    return "xla", (
        f"attention: compiled with the 'xla' backend (the config names {named!r}, which does not "
        f"compile on {jax.default_backend()}); temp_bytes include the xla backend's fp32 attention "
        f"scores, which a flash backend does not allocate"
    )


def compiled_notes(config, devices: int) -> tuple[str, ...]:
    """What the compiled plan compiled with: its attention backend and, for 'xla', the analytic
    estimate of the attention scores its temporaries include."""
    from viewpoint_jax.setup import build

    model_config = build.dit_config(config)
    backend, note = compile_attention_backend(config, model_config)
    if backend != "xla":
        return (f"attention: compiled with the config's {backend!r} backend",)
    notes = [note or "attention: compiled with the config's 'xla' backend"]
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

    from viewpoint_jax.common import sharding as sharding_lib
    from viewpoint_jax.studies import tpu_compile

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
    step, arguments = tpu_compile.abstract_train_step(config, mesh, rules)
    lowered = step.lower(*arguments)
    print(f"lowered in {time.perf_counter() - start:.0f} s, compiling", file=sys.stderr)
    compiled = lowered.compile()
    print(f"compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return compiled, arguments


def compiled_plan(config, devices: int) -> dict[str, int]:
    """`tpu_compile.memory_of` the train step compiled for `devices` simulated devices."""
    from viewpoint_jax.studies import tpu_compile

    return tpu_compile.memory_of(*compile_train_step(config, devices))


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


def format_search_table(config_name: str, rows: list[dict], hbm_gb: float, headroom_gib: float):
    """Markdown: one row per mesh tried, GiB per device, and whether it fits."""
    lines = [
        f"{config_name}: GiB per device, one sample per fsdp group; fits = total + "
        f"{headroom_gib:g} GiB headroom <= {hbm_gb:g} GB",
        "",
        "| devices | fsdp | sequence | batch | params | optimizer | gradients | activations "
        "| total | fits |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        plan, mesh = row["plan"], row["mesh"]
        cells = [plan[k] / GIB for k in ("param_bytes", "optimizer_bytes", "gradient_bytes")]
        cells += [plan["activations"] / GIB, plan["total_bytes"] / GIB]
        lines.append(
            f"| {row['devices']} | {mesh['fsdp']} | {mesh['sequence']} | {row['batch_size']} | "
            + " | ".join(f"{c:.2f}" for c in cells)
            + f" | {'yes' if row['fits'] else 'no'} |"
        )
    first = next((row for row in rows if row["fits"]), None)
    lines.append(
        "\nsmallest: "
        + (f"{first['devices']} devices, {first['mesh']}" if first else "none of these fits")
    )
    return "\n".join(lines)


def _simulate_devices(count: int) -> None:
    """Simulated CPU devices for a compiled plan (must be set before jax starts)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("config", None, "configs/*.py[:arg]", required=True)
    flags.DEFINE_list("devices", ["8"], "devices of the mesh; sample mode: a list, e.g. 1,2,4,8")
    flags.DEFINE_float("hbm_gb", 80.0, "memory per device, GB")
    flags.DEFINE_enum("method", "analytic", ["analytic", "compiled"], "how the plan is made")
    flags.DEFINE_enum("mode", "train", ["train", "sample"], "the train step or sampling")
    flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "sample mode: weights")
    flags.DEFINE_integer("map_size", None, "sample mode: override config.data.map_size")
    flags.DEFINE_integer("batch_size", None, "train mode: override config.data.batch_size")
    flags.DEFINE_integer("sequence", 1, "sample mode: the sequence axis of --mesh", lower_bound=1)
    flags.DEFINE_bool("search", False, "train mode: the smallest mesh over --devices that fits")
    flags.DEFINE_float("headroom_gib", 0.0, "--search: GiB per device beyond the plan")


def main(argv: list[str]) -> int:
    from absl import flags

    from viewpoint_jax.common.cli import UserError, refuse_positional

    refuse_positional(argv)
    args = flags.FLAGS
    try:
        device_counts = [int(n) for n in args.devices]
    except ValueError:
        raise UserError(f"--devices takes device counts, got {','.join(args.devices)}") from None
    if args.mode == "sample":
        return sample_main(args, device_counts)
    if args.search:
        from viewpoint_jax.training import memory

        rows = memory.smallest_mesh(
            load_config(args.config), tuple(device_counts), args.hbm_gb * 1e9,
            args.headroom_gib * GIB,
        )  # fmt: skip
        print(format_search_table(args.config, rows, args.hbm_gb, args.headroom_gib))
        return 0
    if len(device_counts) != 1:
        raise UserError("--devices takes one count in train mode")
    devices = device_counts[0]
    if args.method == "compiled":
        _simulate_devices(devices)
    config = load_config(args.config)
    if args.batch_size:  # e.g. 1 for one device of a recipe sized for 8
        config.data.batch_size = args.batch_size
    if args.method == "analytic":
        plan, notes = analytic_plan(config, devices), ()
    else:
        plan, notes = compiled_plan(config, devices), compiled_notes(config, devices)
    print(format_plan(plan, args.method, devices, args.hbm_gb, notes))
    return 0


def sample_main(args, device_counts: list[int]) -> int:
    """--mode sample: per-device bytes of sampling for each device count."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _simulate_devices(max(device_counts))  # the VAE decode (and --method compiled) compile
    config = load_config(args.config)
    if args.map_size:
        config.data.map_size = args.map_size
    if args.method == "compiled":
        print(
            f"| devices | tokens | arguments | analytic weights | temporaries | "
            f"analytic gathered + activations + xla scores |  (GiB per device, {args.dtype})"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for devices in device_counts:
            plan = compiled_sample_plan(config, devices, args.dtype)
            print(
                f"| {devices} | {plan['tokens']} | {plan['argument_bytes'] / GIB:.2f} | "
                f"{plan['analytic_weight_bytes'] / GIB:.2f} | {plan['temp_bytes'] / GIB:.2f} | "
                f"{plan['analytic_temp_bytes'] / GIB:.2f} |",
                flush=True,
            )
        return 0
    sequence = args.sequence
    plans = {n: sample_plan(config, n, args.dtype, sequence=sequence) for n in device_counts}
    print(format_sample_table(args.config, args.dtype, plans, args.hbm_gb))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from viewpoint_jax.common.cli import run

    run(main, define_flags)
