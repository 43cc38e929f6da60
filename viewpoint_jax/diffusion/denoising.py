"""The compiled sampling loop: conditions -> latents of the canvas in one XLA program.

`sample_latents` runs the whole denoising loop in a `lax.fori_loop`: no host round trip per step,
the model traced once however many steps, and the schedule an input array, so a new seed, shift
or guidance scale reuses the compiled program.
Classifier-free guidance evaluates the conditional and unconditional branches as one batch of 2B.

The model sees, per step, `concat([x_t, condition latent, mask])` (C + C + 1 channels, 33 with
Wan's VAE; channels last) at timestep `t` and predicts the flow velocity `noise - x_0`.
Optionally the predicted clean latent is made consistent across the overlaps of the map at every
step (`fuse_every_step`, the ViewPoint map only): the two copies of a shared sphere region are
replaced by their weighted blend (spec §4), at latent resolution. The final map -> ERP conversion
always fuses, in pixel space (`generation/decoding.py`). Optionally (`keep_known`) the clean
latent the model predicts is replaced by the condition's latent on every latent cell the
condition covers wholly (`known_cells`), at every step: the known view then comes back exactly
(up to the autoencoder) and the model paints around it. `impose_known_frames` pastes wholly known
latent frames back after sampling.

The conditions themselves (a perspective video or image, a known prefix, encoded with the
autoencoder) are built in `generation/conditioning.py`; here they are arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from viewpoint_jax import geometry
from viewpoint_jax.common import fileio, sharding
from viewpoint_jax.diffusion import schedulers
from viewpoint_jax.models import attention as attention_lib


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """Settings of one sampling run (saved beside its outputs).

    Defaults are Wan2.1's text-to-video settings: UniPC, 50 steps, shift 5, guidance 5.
    """

    num_steps: int = 50
    shift: float = 5.0
    guidance_scale: float = 5.0
    scheduler: str = "unipc"
    seed: int = 0
    fuse_every_step: bool = False
    keep_known: bool = False

    def __post_init__(self):
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if not self.guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale!r}")
        if self.scheduler not in schedulers.SCHEDULERS:
            raise ValueError(
                f"scheduler must be one of {schedulers.SCHEDULERS}, got {self.scheduler!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleSettings:
        return fileio.dataclass_from_dict(cls, d)

    @classmethod
    def from_config(cls, sample_config: Any, **overrides: Any) -> SampleSettings:
        """A run config's `config.sample` defaults (steps, shift, guidance_scale, scheduler,
        fuse_every_step, keep_known), with `overrides` (SampleSettings fields; None keeps the
        config's)."""
        fields = {
            "num_steps": int(sample_config.steps),
            "shift": float(sample_config.shift),
            "guidance_scale": float(sample_config.guidance_scale),
            "scheduler": str(sample_config.scheduler),
            "fuse_every_step": bool(sample_config.get("fuse_every_step", False)),
            "keep_known": bool(sample_config.get("keep_known", False)),
        }
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


class Conditions(NamedTuple):
    """What the model is conditioned on (a pytree; B = batch).

    context: `(B, L, D)` text embeddings of the prompt; negative_context: `(B, L, D)` those of the
    negative prompt (the unconditional branch of guidance). latent: `(B, f, h, w, C)` latent of
    the condition video projected onto the map (the latent of an all-zero video when there is no
    condition); mask: `(B, f, h, w, 1)` its coverage at latent resolution, in [0, 1].
    """

    context: jax.Array
    negative_context: jax.Array
    latent: jax.Array
    mask: jax.Array


def model_input(x: jax.Array, latent: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """The model's 33-channel input `(B, f, h, w, 2C + 1)`: noisy latent, condition, mask; a
    plain text-to-video DiT (no condition: None, None) takes `x` `(B, f, h, w, C)` alone."""
    if latent is None:
        return x
    return jnp.concatenate([x, latent.astype(x.dtype), mask.astype(x.dtype)], axis=-1)


def guided_velocity(
    model: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    t: jax.Array,
    condition: jax.Array,
    context: jax.Array,
    guidance_scale: jax.Array | float,
    use_cfg: bool = True,
) -> jax.Array:
    """Velocity at `x` `(B, f, h, w, C)` and scalar timestep `t`, with classifier-free guidance
    `v_u + g (v_c - v_u)`.

    `condition` is the loop-invariant part of the model input, `concat([latent, mask])`, and
    `context` the text embeddings; with `use_cfg` both are already doubled to the 2B batch
    (conditional first), and both branches run as one model call.
    """
    batch = x.shape[0]
    noisy = jnp.concatenate([x, x], axis=0) if use_cfg else x
    inputs = jnp.concatenate([noisy, condition.astype(x.dtype)], axis=-1)
    timesteps = jnp.full((inputs.shape[0],), t, jnp.float32)
    velocity = model(inputs, timesteps, context).astype(jnp.float32)
    if not use_cfg:
        return velocity
    conditional, unconditional = velocity[:batch], velocity[batch:]
    return unconditional + guidance_scale * (conditional - unconditional)


def denoise(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    conditions: Conditions,
    rng: jax.Array,
    schedule: schedulers.Schedule,
    guidance_scale: jax.Array | float,
    *,
    use_cfg: bool = True,
    fuse_every_step: bool = False,
    keep_known: bool = False,
    progress: Callable[[jax.Array], Any] | None = None,
    mesh_context: tuple[jax.sharding.Mesh, sharding.LogicalRules] | None = None,
) -> jax.Array:
    """Pure denoising loop from Gaussian noise (drawn from `rng`) to clean latents
    `(B, f, h, w, C)`, float32, shaped like `conditions.latent`.

    `keep_known` replaces the predicted clean latent by `conditions.latent` on `known_cells`
    at every step, so those cells follow the straight path from their initial noise to the
    condition's latent and end on it exactly (Euler and UniPC alike: both step from the clean
    estimate); the model sees them consistent with the view at every noise level.

    `progress(i)`, if given, is called on the host after each step (`jax.debug.callback`);
    everything else stays on device. `mesh_context` (mesh, rules) traces the model's activation
    constraints for that mesh (`sharding.use_mesh`); a static argument, so a program traced for
    one mesh is never reused for another.
    """
    if mesh_context is not None:
        with sharding.use_mesh(*mesh_context):
            return denoise(
                graphdef,
                params,
                conditions,
                rng,
                schedule,
                guidance_scale,
                use_cfg=use_cfg,
                fuse_every_step=fuse_every_step,
                keep_known=keep_known,
                progress=progress,
            )
    model = nnx.merge(graphdef, params)
    x = sharding.constrain(jax.random.normal(rng, conditions.latent.shape, jnp.float32), BATCH_AXES)
    condition = jnp.concatenate([conditions.latent, conditions.mask], axis=-1)
    known, known_latent = known_cells(conditions.mask), conditions.latent.astype(jnp.float32)
    context = conditions.context
    if use_cfg:
        condition = jnp.concatenate([condition, condition], axis=0)
        context = jnp.concatenate([conditions.context, conditions.negative_context], axis=0)
    # The 2B batch of both guidance branches splits over the mesh's batch axes (no-op off-mesh).
    condition = sharding.constrain(condition, BATCH_AXES)
    context = sharding.constrain(context, ("batch", None, None))

    def body(i, state):
        x, sigma = state.x, schedule.sigmas[i]
        velocity = guided_velocity(
            model, x, schedule.timesteps[i], condition, context, guidance_scale, use_cfg
        )
        if fuse_every_step or keep_known:
            clean = x - sigma * velocity
            if fuse_every_step:
                clean = geometry.fuse_overlaps(clean)
            if keep_known:  # after the fusion: the view wins where it is known
                clean = jnp.where(known, known_latent, clean)
            velocity = (x - clean) / sigma  # sigma > 0 at every step; only the last target is 0
        state = schedule.step(i, state, velocity)
        if progress is not None:
            jax.debug.callback(progress, i, ordered=False)
        return state

    return jax.lax.fori_loop(0, schedule.num_steps, body, schedule.init(x)).x


# `denoise` compiled: the whole loop is one XLA program.
sample_latents = jax.jit(
    denoise,
    static_argnames=(
        "graphdef",
        "use_cfg",
        "fuse_every_step",
        "keep_known",
        "progress",
        "mesh_context",
    ),
)

# Logical axes of a latent-shaped array `(B, f, h, w, C)`: only the batch is sharded; the DiT
# splits tokens over the sequence axis itself once they are a sequence.
BATCH_AXES: tuple[str | None, ...] = ("batch", None, None, None, None)


def params_mesh(params: Any) -> jax.sharding.Mesh | None:
    """The mesh the model's arrays are sharded over (the first NamedSharding found), if any."""
    for leaf in jax.tree.leaves(params):
        if isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding):
            return leaf.sharding.mesh
    return None


def place_conditions(
    conditions: Conditions, mesh: jax.sharding.Mesh, rules: sharding.LogicalRules | None
) -> Conditions:
    """Conditions onto `mesh`: batch-sharded by `rules` (replicated when `rules` is None).

    Every array of a jitted call must live on the same devices, and the conditions come from the
    text encoder and autoencoder, wherever those run; a fixed placement per shape also keeps the
    compiled sampler's cache key the same for every prompt and seed.
    """

    def place(x: jax.Array) -> jax.Array:
        if rules is None:
            return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        logical = ("batch",) + (None,) * (x.ndim - 1)
        return jax.device_put(x, sharding.named_sharding(mesh, logical, x.shape, rules))

    return Conditions(*(place(jnp.asarray(x)) for x in conditions))


def check_mesh_fits(
    model_config: Any, mesh: jax.sharding.Mesh, latent_shape: tuple[int, ...] | None = None
) -> None:
    """Refuses a mesh that does not divide the DiT: heads (and FFN width) by `tensor`, the token
    count of a `(B, f, h, w, C)` latent by `sequence`, and under Ulysses attention each device's
    heads by `sequence`. ValueError naming the axis.

    (An indivisible axis would otherwise be dropped silently by `sharding.named_sharding`,
    replicating what the mesh was meant to split.)
    """
    tensor, sequence = mesh.shape.get("tensor", 1), mesh.shape.get("sequence", 1)
    for field in ("num_heads", "ffn_dim"):
        size = getattr(model_config, field)
        if size % tensor:
            raise ValueError(
                f"mesh axis 'tensor' of size {tensor} does not divide the DiT's {field} {size}"
            )
    if latent_shape is not None and sequence > 1:
        pt, ph, pw = model_config.patch_size
        f, h, w = latent_shape[1:4]
        tokens = (f // pt) * (h // ph) * (w // pw)
        if tokens % sequence:
            raise ValueError(
                f"mesh axis 'sequence' of size {sequence} does not divide the {tokens} tokens of "
                f"latent {tuple(latent_shape[1:4])} (patch {model_config.patch_size})"
            )
    if sequence > 1 and model_config.sequence_parallel == attention_lib.SequenceParallel.ULYSSES:
        attention_lib.check_ulysses_heads(model_config.num_heads // tensor, sequence)


def sample(
    model: nnx.Module | tuple[nnx.GraphDef, nnx.State],
    conditions: Conditions,
    rng: jax.Array,
    settings: SampleSettings,
    *,
    progress: Callable[[jax.Array], Any] | None = None,
) -> jax.Array:
    """Samples clean map latents `(B, f, h, w, C)` with the compiled loop.

    `model` is an NNX module `model(x, t, context)` (e.g. `WanDiT`) or its `(graphdef, params)`.
    Changing the seed, the conditions, the shift or the guidance scale reuses the compiled program;
    the number of steps, the scheduler, guidance on/off (scale 1 skips the unconditional branch),
    per-step fusion, `keep_known` and `progress` are compile-time choices.

    Sharded: inside `sharding.use_mesh(mesh, rules)` the conditions are placed batch-sharded on
    `mesh` (the 2B guidance batch over data x fsdp where they divide it) and the DiT's activation
    constraints split its tokens over `sequence` and heads over `tensor`; the mesh must divide
    the model (`check_mesh_fits`). Without a context, a model whose weights are sharded over a
    mesh gets the conditions replicated onto it and XLA propagates the weights' shardings.
    """
    graphdef, params = nnx.split(model) if isinstance(model, nnx.Module) else model
    mesh_context = sharding.current_context()
    if mesh_context is not None:
        mesh, rules = mesh_context
        if isinstance(model, nnx.Module):
            check_mesh_fits(model.config, mesh, conditions.latent.shape)
        conditions = place_conditions(conditions, mesh, rules)
    elif (mesh := params_mesh(params)) is not None:
        conditions = place_conditions(conditions, mesh, None)
    schedule = schedulers.make_schedule(settings.scheduler, settings.num_steps, settings.shift)
    return sample_latents(
        graphdef,
        params,
        conditions,
        rng,
        schedule,
        jnp.float32(settings.guidance_scale),
        use_cfg=settings.guidance_scale != 1.0,
        fuse_every_step=settings.fuse_every_step,
        keep_known=settings.keep_known,
        progress=progress,
        mesh_context=mesh_context,
    )


def impose_known_frames(latents: jax.Array, conditions: Conditions) -> jax.Array:
    """Latents `(B, f, h, w, C)` with every wholly known latent frame (mask 1 on every cell) set
    to the condition latent.

    The sampler trusts the model everywhere, so a known prefix comes back only approximately;
    re-imposing it makes continuation exact: the causal VAE encodes the first k latent frames
    from the first 1 + t (k - 1) pixel frames alone, so the condition latent there is the latent
    of the known frames. Partly known frames (perspective views) are left to the model: a view's
    latent cells also see pixels outside it, so their condition latent is not the panorama's.
    """
    known = jnp.all(known_cells(conditions.mask), axis=(2, 3, 4), keepdims=True)
    return jnp.where(known, conditions.latent.astype(latents.dtype), latents)


def known_cells(mask: jax.Array) -> jax.Array:
    """Latent cells `(B, f, h, w, 1)` bool that the condition covers wholly (`mask` 1): those
    whose condition latent is the latent of known pixels alone, for a per-cell autoencoder (the
    block DCT); with Wan's VAE, a cell at a view's edge also sees some of the unknown pixels."""
    return mask >= 1.0
