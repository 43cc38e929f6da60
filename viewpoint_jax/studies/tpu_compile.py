"""The real train step and sampler compiled for a TPU topology from any machine, no TPU needed.

libtpu (the `tpu` or `test` extra) compiles for a named topology in a CPU-only process:
`jax.experimental.topologies.get_topology_desc` gives the TPU devices as descriptions, a mesh over
them traces the program for them, and `jit(...).lower(*abstract).compile()` runs XLA's TPU
compiler and gives its memory analysis. Nothing is allocated; weights are `jax.ShapeDtypeStruct`s.

- train: `loop.make_trainer`'s jitted step (state donated, the config's mesh and rules, remat,
  its attention backend), with abstract encoders (`abstract_train_step`); it follows whatever
  the step becomes.
- sample: the compiled sampling loop (`denoising.sample_latents`: guidance batch, bf16 weights,
  the sampling mesh) and the VAE's tiled decode (`decoding.autoencoder_function`), two programs;
  the DiT's weights stay resident while the second runs.

FLOPs are analytic (`training.telemetry.dit_forward_flops`): XLA's cost analysis counts a scanned
body once and a Pallas kernel not at all (tests/test_tpu_compile.py checks the analytic count
against the cost analysis of an unrolled xla-backend forward). `tools/memory_plan.py --method
compiled` compiles the same abstract programs for simulated CPU devices.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from viewpoint_jax.common import sharding as sharding_lib
from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.diffusion import denoising, schedulers
from viewpoint_jax.generation import decoding
from viewpoint_jax.generation import models as models_lib
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import text_encoder as text_lib
from viewpoint_jax.setup import build
from viewpoint_jax.setup import config as config_lib
from viewpoint_jax.training import loop, memory, telemetry

GIB = 1024**3
MIB = 1024**2


# --- Chips and topologies -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: HBM per chip, dense bf16 peak per chip, where those figures are from,
    whether its accelerator-type names count TensorCores (2 per chip) rather than chips, and
    the number of topology dimensions."""

    name: str
    hbm_bytes: float
    peak_flops: float
    source: str
    counts_cores: bool
    dims: int


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, "cloud.google.com/tpu/docs/v4", True, 3),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, "cloud.google.com/tpu/docs/v5p", True, 3),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, "cloud.google.com/tpu/docs/v5e", False, 2),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, "cloud.google.com/tpu/docs/v6e", False, 2),
}
_ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Target:
    """A TPU slice: its name as given, the topology libtpu compiles for, its chips and chip."""

    name: str
    topology: str
    chips: int
    chip: Chip


def parse_target(spec: str) -> Target:
    """A Cloud TPU accelerator type (`v5p-8`: 4 chips, v4 and v5p count TensorCores; `v6e-8`,
    `v5e-4`: chips) or an explicit topology (`v5p:2x2x2`, `v6e:4x4`) -> Target; ValueError
    naming --target otherwise."""
    spec = spec.strip().lower()
    explicit = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", spec)
    by_type = re.fullmatch(r"([a-z0-9]+)-(\d+)", spec)
    generation = (explicit or by_type).group(1) if (explicit or by_type) else ""
    chip = CHIPS.get(_ALIASES.get(generation, generation))
    if chip is None:
        raise ValueError(
            f"--target {spec!r}: not an accelerator type (v5p-8, v6e-8, v5e-4, v4-8) or a "
            f"topology (v5p:2x2x2, v6e:4x4) of {sorted(CHIPS)}"
        )
    name = next(k for k, v in CHIPS.items() if v == chip)
    if explicit:
        dims = [int(n) for n in explicit.group(2).split("x")]
        if len(dims) != chip.dims:
            raise ValueError(f"--target {spec!r}: {name} topologies have {chip.dims} dimensions")
        return Target(spec, f"{name}:{explicit.group(2)}", math.prod(dims), chip)
    count = int(by_type.group(2))
    chips = count // 2 if chip.counts_cores else count
    if chips < 1 or chips & (chips - 1) or (chip.dims == 3 and chips < 4):
        raise ValueError(f"--target {spec!r}: no {name} slice of {count} (powers of two)")
    return Target(spec, f"{name}:{'x'.join(map(str, _slice_shape(chips, chip.dims)))}", chips, chip)


def on_chips(target: Target, chips: int) -> Target:
    """`target`'s program for its first `chips` chips: a smaller machine of the same chip (libtpu
    lays out no single-chip v5p slice, but one chip of a v5p-8 compiles as one v5p chip would).
    ValueError naming --chips unless 1 <= chips <= the target's chips."""
    if not 1 <= chips <= target.chips:
        raise ValueError(f"--chips {chips}: {target.name} has {target.chips} chips")
    return dataclasses.replace(target, chips=chips)


def topology_chips(target: Target) -> int:
    """The chips of the topology libtpu lays out for `target` (more than it uses: `on_chips`)."""
    return math.prod(int(n) for n in target.topology.split(":")[1].split("x"))


def _slice_shape(chips: int, dims: int) -> list[int]:
    """Cloud TPU's slice shapes: 3D 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...; 2D 1x1, 2x2, 2x4,
    4x4, 4x8, ... (each doubles the last of the smallest dimensions)."""
    shape = [2, 2, 1] if dims == 3 else [1, 1]
    while math.prod(shape) < chips:
        smallest = min(shape)
        last = max(i for i, n in enumerate(shape) if n == smallest)
        shape[last] *= 2
    return shape


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def use_cpu_backend() -> None:
    """This process runs nothing, it compiles for the target's chips: the CPU backend only (not
    a local accelerator), unless jax has started already (then it keeps its platforms)."""
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


def topology_devices(target: Target) -> list[Any]:
    """The target's TPU devices (descriptions: they compile, never run); ValueError naming the
    extra without libtpu."""
    if not libtpu_installed():
        raise ValueError(
            "compiling for a TPU needs libtpu: pip install -e '.[tpu]' (or '.[test]'), no TPU "
            "needed"
        )
    # This process compiles for the target and runs nothing on it: libtpu is told it is not on
    # a TPU host (else it queries the host's metadata and logs warnings about it), and that other
    # processes may load it too (compiles in parallel, as tests under xdist).
    for name, value in (
        ("TPU_SKIP_MDS_QUERY", "1"),
        ("TPU_WORKER_ID", "0"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
        ("TPU_ACCELERATOR_TYPE", target.name),
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
    ):
        os.environ.setdefault(name, value)
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(topology_name=target.topology, platform="tpu")
    except jax.errors.JaxRuntimeError as error:  # libtpu's word on a layout it cannot make
        reason = str(error).strip().splitlines()[0].removeprefix("INVALID_ARGUMENT: ")
        raise ValueError(f"--target {target.name}: libtpu cannot lay it out ({reason})") from None
    return list(topology.devices)[: target.chips]


# --- The programs ---------------------------------------------------------------------------------


def abstract_train_step(config: ml_collections.ConfigDict, mesh, rules) -> tuple[Any, tuple]:
    """The train step as `loop.make_trainer` jits it, with abstract encoders (no checkpoint is
    read, no weight allocated, so any model size lowers anywhere), and its abstract arguments
    (state, batch, frozen encoder weights) as sharded shapes: `step_fn.lower(*arguments)`."""
    trainer = loop.make_trainer(
        config,
        mesh,
        rules,
        autoencoder=build.abstract_autoencoder(config),
        text_encoder=text_lib.TextEncoder(build.abstract_text_model(config), None),
    )
    data, b = config.data, config.data.batch_size
    (h, w), f = data_config_lib.canvas_hw(data), data.num_frames
    if data.precomputed_latents:
        latent = autoencoder_lib.latent_shape(trainer.autoencoder, (b, f, h, w, 3))
        shapes = {"latents": latent, "condition_latents": latent, "latent_mask": (*latent[:4], 1)}
    else:
        shapes = {"target_map": (b, f, h, w, 3), "condition_map": (b, f, h, w, 3)}
        shapes["condition_mask"] = (b, f, h, w, 1)
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


def abstract_sampler(
    config: ml_collections.ConfigDict, mesh, model_config: dit_lib.DiTConfig
) -> tuple[Any, tuple, dict]:
    """The compiled sampling loop as `denoising.sample` calls it for one video of `config.data`'s
    size on `mesh` (`config.sample`'s scheduler, steps and guidance), with abstract weights of
    `model_config` sharded by the config's rules: (function, arguments, static keywords) for
    `function.lower(*arguments, **keywords)`."""
    rules = config_lib.logical_rules(config)
    latent = models_lib.latent_shape(config)
    denoising.check_mesh_fits(model_config, mesh, latent)
    graphdef, params = nnx.split(dit_lib.abstract_model(model_config))
    params = sharding_lib.with_shardings(params, sharding_lib.state_shardings(params, mesh, rules))
    text = (1, int(config.text_encoder.max_length), model_config.text_dim)

    def placed(shape):
        logical = ("batch",) + (None,) * (len(shape) - 1)
        named = sharding_lib.named_sharding(mesh, logical, shape, rules)
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=named)

    conditions = denoising.Conditions(
        placed(text), placed(text), placed(latent), placed((*latent[:4], 1))
    )
    settings = denoising.SampleSettings.from_config(config.sample)
    schedule = schedulers.make_schedule(settings.scheduler, settings.num_steps, settings.shift)
    arguments = (graphdef, params, conditions, jax.random.key(0), schedule)
    arguments += (jnp.float32(settings.guidance_scale),)
    keywords = dict(
        use_cfg=settings.guidance_scale != 1.0,
        fuse_every_step=settings.fuse_every_step,
        keep_known=settings.keep_known,
        mesh_context=(mesh, rules),
    )
    return denoising.sample_latents, arguments, keywords


def abstract_decode(config, mesh, latent: tuple[int, ...], autoencoder=None) -> tuple[Any, tuple]:
    """The autoencoder's tiled decode of one `latent` as sampling runs it
    (`decoding.decode_latents`: tiles spread over `mesh`, weights replicated), abstract:
    (jitted function, arguments)."""
    autoencoder = build.abstract_autoencoder(config) if autoencoder is None else autoencoder
    tiling = decoding.Tiling(decoding.DECODE_TILE, decoding.DECODE_TILE_OVERLAP, mesh)
    decode, arrays = decoding.autoencoder_function(autoencoder, "decode", tiling)
    everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def placed(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere)

    arrays = jax.tree.map(placed, arrays)
    z = placed(jax.ShapeDtypeStruct(latent, jnp.float32))
    options = autoencoder_lib.compiler_options(autoencoder)
    return jax.jit(decode, compiler_options=options), (arrays, z)


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s (or arrays)."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
        if hasattr(x, "sharding")
    )


def memory_of(compiled, arguments=None) -> dict[str, int]:
    """XLA's memory analysis of a compiled program, per device: arguments, outputs, the donated
    arguments aliased to outputs, temporaries; plus the weights handed in that the program never
    reads (jit drops them from its arguments: in the train step, the VAE decoder, used by
    previews only), which a run still holds.
    total = arguments + outputs - aliased + temporaries + unread weights."""
    analysis = compiled.memory_analysis()
    unread = max(0, per_device_bytes(arguments) - analysis.argument_size_in_bytes)
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


# --- Compiling with progress ----------------------------------------------------------------------


class _Heartbeat:
    """Prints `<what>: N s` to stderr every `every` seconds while a compile runs (minutes at real
    size), so a long compile is seen to be alive."""

    def __init__(self, what: str, every: float = 30.0):
        self.what, self.every = what, every
        self.start = time.perf_counter()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(self.every):
            print(f"  {self.what}: {self.elapsed():.0f} s", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __enter__(self):
        print(f"{self.what} ...", file=sys.stderr, flush=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


_OOM = re.compile(r"exceed(?:s)? available HBM \(([\d.]+)([KMGT])\)")
_OOM_USED = re.compile(r"\(([\d.]+)([KMGT])\) exceed")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass
class Compiled:
    """One compiled program: its memory per device (`memory_of`), or, when XLA refused it for
    want of HBM, the bytes it asked for and had; and the seconds lowering + compiling took."""

    name: str
    seconds: float
    memory: dict[str, int] | None = None
    pallas_calls: int = 0  # Pallas kernels (splash attention) in the compiled program
    refused: str | None = None
    needed_bytes: float | None = None


def compile_program(
    name: str, function, arguments: tuple, keywords: dict | None = None, *, handed_in=None
) -> Compiled:
    """Lowers and compiles `function(*arguments, **keywords)`, with progress on stderr; its
    memory counts what of `handed_in` (sharded shapes) it does not read (`memory_of`). XLA's
    refusal for want of HBM is a result (what it needed, from its message), not an error."""
    with _Heartbeat(f"compiling the {name}") as beat:
        try:
            compiled = function.lower(*arguments, **(keywords or {})).compile()
        except Exception as error:  # XlaRuntimeError: RESOURCE_EXHAUSTED, and nothing else
            message = str(error)
            used = _OOM_USED.search(message)
            if "RESOURCE_EXHAUSTED" not in message or not _OOM.search(message):
                raise
            needed = float(used.group(1)) * _UNITS[used.group(2)] if used else None
            first = next(line for line in message.splitlines() if "exceed" in line).strip()
            return Compiled(name, beat.elapsed(), refused=first[:300], needed_bytes=needed)
    seconds = beat.elapsed()
    print(f"  compiled in {seconds:.0f} s", file=sys.stderr, flush=True)
    pallas = compiled.as_text().count('custom_call_target="tpu_custom_call"')
    return Compiled(name, seconds, memory=memory_of(compiled, handed_in), pallas_calls=pallas)


# --- A config on a target -------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """What was compiled and what it costs per device (see `format_report`)."""

    target: Target
    mode: str
    what: dict[str, str]
    programs: list[Compiled]
    resident_bytes: float  # held during every program but not its argument (sampling: DiT weights)
    flops_per_device: float  # per train step, or per denoising step
    steps: int  # denoising steps per video (1 for train)
    analytic: dict[str, float]
    notes: list[str]


def for_target(config: ml_collections.ConfigDict, batch_per_chip: int, target: Target, mode: str):
    """A copy of `config` as it can run on `target`: a GPU-only attention backend (cudnn)
    replaced by splash, the TPU kernel; the training batch `batch_per_chip` x chips (the
    paper's recipe: 1), where a sample is spread over the config's sequence x tensor axes
    `batch_per_chip` x the batch shards (data x fsdp: a 2K mesh fsdp 2 x sequence 4 on 8 chips
    takes 2 samples, one per 4 chips). Returns (config, notes saying what changed)."""
    config = config.copy_and_resolve_references()
    notes = []
    if config.model.attention_backend == "cudnn":
        config.model.attention_backend = "splash"
        notes.append(
            "attention: the config names 'cudnn' (NVIDIA GPUs only); compiled with 'splash', "
            "the TPU kernel"
        )
    if mode != "train":  # sampling runs on the sampling mesh, its own batch
        return config, notes
    sizes = config_lib.mesh_shape(config, target.chips)
    per_sample = sizes["sequence"] * sizes["tensor"]  # chips one sample is spread over
    batch = batch_per_chip * target.chips // per_sample
    if config.data.batch_size != batch:
        where = "per chip" if per_sample == 1 else f"per {per_sample} chips (sequence x tensor)"
        notes.append(
            f"batch: {batch_per_chip} {where}, {batch} in all "
            f"(the config's {config.data.batch_size} is for another count of devices)"
        )
        config.data.batch_size = batch
    return config, notes


def _batch_shards(batch: int, mesh_sizes: dict[str, int]) -> int:
    """How many ways the batch splits: the batch axes (data, fsdp) that divide it, as
    `sharding.named_sharding` fits them (the rest of the mesh then computes it whole)."""
    shards = 1
    for axis in ("data", "fsdp"):
        if batch % (shards * mesh_sizes[axis]) == 0:
            shards *= mesh_sizes[axis]
    return shards


def _describe(config, model_config, mesh, target: Target, tokens: int, batch: int) -> dict:
    sizes = dict(mesh.shape)
    return {
        "topology": f"{target.name} = {target.topology}, {target.chips} x {target.chip.name}"
        + (
            f" (the first {target.chips} of its {topology_chips(target)} chips)"
            if target.chips < topology_chips(target)
            else ""
        ),
        "mesh": " ".join(f"{axis}={n}" for axis, n in sizes.items()),
        "model": f"{config.model.preset}, {model_config.param_dtype} weights, "
        f"{model_config.dtype} compute",
        "attention": model_config.attention_backend
        + (
            f", {model_config.sequence_parallel} over the sequence axis"
            if sizes["sequence"] > 1
            else ""
        ),
        "remat": model_config.remat_policy,
        "tokens": f"{tokens} per sample",
        "batch": f"{batch} ({_batch_shards(batch, sizes)}-way split)",
    }


def compile_train(config: ml_collections.ConfigDict, target: Target, devices: list) -> Report:
    """The config's train step compiled for `devices` (`loop.make_trainer`'s, see
    `abstract_train_step`) and its analytic plan (`training.memory.training_plan`)."""
    mesh, rules = config_lib.mesh_and_rules(config, devices)
    model_config = build.dit_config(config)
    batch = int(config.data.batch_size)
    if batch % _batch_shards(batch, dict(mesh.shape)) or batch < mesh.shape["data"]:
        raise ValueError(f"config.data.batch_size {batch} does not split over {dict(mesh.shape)}")
    data = config.data
    video = (1, data.num_frames, *data_config_lib.canvas_hw(data), 3)
    grid = autoencoder_lib.latent_shape(build.abstract_autoencoder(config), video)[1:4]
    text_tokens = int(config.text_encoder.max_length)
    tokens = telemetry.tokens_per_sample(model_config, grid)
    step, arguments = abstract_train_step(config, mesh, rules)
    program = compile_program("train step", step, arguments, handed_in=arguments)
    sizes = dict(mesh.shape)
    shards = _batch_shards(batch, sizes) * sizes["sequence"] * sizes["tensor"]
    flops = telemetry.train_step_flops(model_config, grid, text_tokens, batch) / shards
    return Report(
        target=target,
        mode="train",
        what=_describe(config, model_config, mesh, target, tokens, batch),
        programs=[program],
        resident_bytes=0.0,
        flops_per_device=flops,
        steps=1,
        analytic=memory.training_plan(config, sizes, model_config),
        notes=[],
    )


def compile_sample(
    config: ml_collections.ConfigDict,
    target: Target,
    devices: list,
    mesh_spec: str | None = None,
    dtype: str = "bfloat16",
) -> Report:
    """The sampling loop and the VAE decode of one video compiled for `devices` on the sampling
    mesh (`generation.models.sampling_meshes(mesh_spec)`: FSDP over all by default), the DiT in
    `dtype`."""
    mesh = models_lib.sampling_meshes(mesh_spec, devices)[0]
    model_config = dataclasses.replace(build.dit_config(config), dtype=dtype, param_dtype=dtype)
    autoencoder = build.abstract_autoencoder(config)
    latent = models_lib.latent_shape(config, autoencoder=autoencoder)
    tokens = telemetry.tokens_per_sample(model_config, latent[1:4])
    function, arguments, keywords = abstract_sampler(config, mesh, model_config)
    sampler = compile_program("sampling loop", function, arguments, keywords)
    decode = compile_program("VAE decode", *abstract_decode(config, mesh, latent, autoencoder))
    sizes = dict(mesh.shape)
    guidance = 2 if keywords["use_cfg"] else 1
    shards = _batch_shards(guidance, sizes) * sizes["sequence"] * sizes["tensor"]
    text_tokens = int(config.text_encoder.max_length)
    flops = guidance * telemetry.dit_forward_flops(model_config, latent[1:4], text_tokens) / shards
    notes = []
    if shards < math.prod(sizes.values()):
        notes.append(
            f"the sampling batch of {guidance} (the guidance branches) splits {shards} way(s) "
            f"over {math.prod(sizes.values())} chips: each chip computes {guidance // shards} of "
            "every step (`--mesh fsdp=2,sequence=-1` splits the tokens too)"
        )
    return Report(
        target=target,
        mode="sample",
        what=_describe(config, model_config, mesh, target, tokens, guidance),
        programs=[sampler, decode],
        resident_bytes=per_device_bytes(arguments[1]),
        flops_per_device=flops,
        steps=int(config.sample.steps),
        analytic={},
        notes=notes,
    )


def format_report(report: Report, config_name: str) -> str:
    """The table the command prints: what was compiled, memory per chip of each program vs the
    chip's HBM (MiB when it all stays under 1 GiB), FLOPs and the roofline time, compile times;
    a last `row:` line for BENCHMARKS.md."""
    chip = report.target.chip
    totals = [_total(p, report.resident_bytes) for p in report.programs]
    unit, name = (GIB, "GiB") if max(totals) >= GIB else (MIB, "MiB")
    lines = [f"{report.mode} of {config_name} compiled for a TPU (no TPU used):"]
    lines += [f"  {key}: {value}" for key, value in report.what.items()]
    kernels = sum(p.pallas_calls for p in report.programs)
    lines.append(f"  Pallas kernel calls in the compiled programs: {kernels}")
    lines += ["", f"| {name} per chip | " + " | ".join(p.name for p in report.programs) + " |"]
    lines.append("|---|" + "---:|" * len(report.programs))
    rows = [
        ("arguments", "argument_bytes"),
        ("outputs", "output_bytes"),
        ("aliased (donated)", "alias_bytes"),
        ("temporaries", "temp_bytes"),
        ("weights passed, not read", "unread_weight_bytes"),
    ]
    for label, key in rows:
        cells = [f"{p.memory[key] / unit:.2f}" if p.memory else "-" for p in report.programs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if report.resident_bytes:
        cells = ["-"] + [f"{report.resident_bytes / unit:.2f}"] * (len(totals) - 1)
        lines.append("| DiT weights, resident | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"{t / unit:.2f}" for t in totals) + " |")
    verdict = _verdict(max(totals), chip)
    lines += ["", verdict]
    lines += [f"  XLA refused the {p.name}: {p.refused}" for p in report.programs if p.refused]
    if report.analytic:
        a = report.analytic
        terms = ("param_bytes", "optimizer_bytes", "gradient_bytes", "activations")
        lines.append(
            "analytic plan (training/memory.py): parameters + optimizer + gradients + "
            f"activations = {' + '.join(f'{a[k] / unit:.2f}' for k in terms)} = "
            f"{a['total_bytes'] / unit:.2f} {name}"
        )
    lines += _flops_lines(report)
    times = ", ".join(f"{p.name} {p.seconds:.0f} s" for p in report.programs)
    lines.append(f"compile time (lowering included): {times}")
    lines += report.notes
    lines.append("row: " + _row(report, config_name, totals, verdict))
    return "\n".join(lines)


def _total(program: Compiled, resident: float) -> float:
    if program.memory is None:
        return float(program.needed_bytes or math.inf)
    return program.memory["total_bytes"] + (resident if program.name != "sampling loop" else 0)


def _verdict(peak: float, chip: Chip) -> str:
    """Whether the largest program fits the chip's HBM, and by how much (or how much not)."""
    hbm = f"the {chip.hbm_bytes / GIB:.0f} GiB HBM of a {chip.name} ({chip.source})"
    if peak <= chip.hbm_bytes:
        return f"fits: {peak / GIB:.2f} GiB per chip of {hbm}, {(chip.hbm_bytes - peak) / GIB:.2f} GiB free"
    return f"does NOT fit: {peak / GIB:.2f} GiB per chip, {(peak - chip.hbm_bytes) / GIB:.2f} GiB over {hbm}"


def _flops_lines(report: Report) -> list[str]:
    chip = report.target.chip
    seconds = report.flops_per_device / chip.peak_flops
    what = (
        "train step (3 x forward; remat's recomputation not counted)"
        if report.mode == "train"
        else "denoising step (the sampling batch: both guidance branches, or one)"
    )
    lines = [
        f"FLOPs per chip per {what}: {report.flops_per_device / 1e12:.1f} TFLOP "
        "(analytic, training/telemetry.py; XLA's cost analysis counts a scanned layer once)",
        f"roofline: {seconds:.3f} s per {'train' if report.mode == 'train' else 'denoising'} step at {chip.peak_flops / 1e12:.0f} "
        f"TFLOP/s bf16 per chip ({chip.source})",
    ]
    if report.mode == "sample":
        lines.append(
            f"roofline per video: {seconds * report.steps:.1f} s ({report.steps} steps; the VAE "
            "decode and the text encoder not counted)"
        )
    return lines


def _row(report: Report, config_name: str, totals: list[float], verdict: str) -> str:
    """One BENCHMARKS row: target, config, mode, GiB per program, fits, TFLOP, roofline,
    compile seconds, analytic GiB."""
    chip = report.target.chip
    seconds = report.flops_per_device / chip.peak_flops * report.steps
    analytic = report.analytic.get("total_bytes")
    cells = [
        report.target.name,
        config_name,
        report.mode,
        " / ".join(f"{t / GIB:.2f}" for t in totals),
        "yes" if verdict.startswith("fits") else "no",
        f"{report.flops_per_device / 1e12:.1f}",
        f"{seconds:.2f} s" if report.mode == "train" else f"{seconds:.0f} s",
        " + ".join(f"{p.seconds:.0f}" for p in report.programs) + " s",
        f"{analytic / GIB:.2f}" if analytic else "-",
    ]
    return "| " + " | ".join(cells) + " |"
