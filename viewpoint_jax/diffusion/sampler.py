"""The compiled sampler: conditions -> ViewPoint-map latents in one XLA program.

`sample_latents` runs the whole denoising loop in a `lax.fori_loop`: no host round trip per step,
the model traced once however many steps, and the schedule an input array, so a new seed, shift
or guidance scale reuses the compiled program.
Classifier-free guidance evaluates the conditional and unconditional branches as one batch of 2B.

The model sees, per step, `concat([x_t, condition latent, mask])` (C + C + 1 channels, 33 with
Wan's VAE; channels last) at timestep `t` and predicts the flow velocity `noise - x_0`.
Optionally the predicted clean latent is made consistent across the overlaps of the map at every
step (`fuse_every_step`): the two copies of a shared sphere region are replaced by their weighted
blend (spec §4), at latent resolution. The final map -> ERP conversion always fuses, in pixel
space (`canvas_to_panorama`). Optionally (`keep_known`) the clean latent the model predicts is replaced
by the condition's latent on every latent cell the condition covers wholly, at every step: the
known view then comes back exactly (up to the autoencoder) and the model paints around it.

Building conditions (pure array code, I/O stays in the CLI): `perspective_condition` projects a
perspective video/image onto the map with its coverage mask; `image_condition` knows one image at
frame 0 only; `prefix_condition` knows the first frames of a panorama in full (continuation);
`encode_condition` encodes a condition with the autoencoder and brings the mask to latent
resolution. `impose_known_frames` pastes wholly known latent frames back after sampling.

`representation` (`config.data.representation`, geometry/canvas.py): the "map" here is the frame
the model denoises, the ViewPoint map by default or the ERP / cube raster of about as many
pixels (`geometry.canvas_size(representation, map_size)`); conditions are projected onto it
and `canvas_to_panorama` converts it to ERP. Per-step fusion needs the ViewPoint map.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from viewpoint_jax import geometry
from viewpoint_jax.common import fileio, sharding
from viewpoint_jax.diffusion import schedulers
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models import autoencoder as autoencoder_lib
from viewpoint_jax.models import vae as vae_lib


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
    count of a `(B, f, h, w, C)` latent by `sequence`. ValueError naming the axis.

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


# --- Conditions ----------------------------------------------------------------------------------


def valid_frame_count(num_frames: int, temporal_factor: int = 4) -> int:
    """The largest `1 + temporal_factor k <= num_frames` (the frame counts the causal VAE takes)."""
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    return 1 + (num_frames - 1) // temporal_factor * temporal_factor


def perspective_condition(
    video: jax.Array,
    map_size: int,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    *,
    representation: Representation = Representation.VIEWPOINT,
) -> tuple[jax.Array, jax.Array]:
    """Projects a perspective video `(F, h, w, 3)` (uint8, or float in [-1, 1]) onto the map
    (the frames of `representation`, (Hm, Wm) = `geometry.canvas_size(representation, map_size)`).

    Returns the condition video `(F, Hm, Wm, 3)` in [-1, 1], 0 outside the covered area, and the
    coverage mask `(F, Hm, Wm, 1)` in [0, 1]. `fov_deg` is the horizontal field of view.
    """
    if not 0 < fov_deg < 180:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    video = jnp.asarray(video)
    if video.dtype == jnp.uint8:
        video = video.astype(jnp.float32) / 127.5 - 1.0
    canvas_hw = geometry.canvas_size(representation, map_size)
    projected, mask = geometry.perspective_to_canvas(
        video, fov_deg, yaw_deg, pitch_deg, roll_deg, representation, canvas_hw
    )
    mask = mask.astype(jnp.float32)
    return projected * mask, mask


def encode_video(autoencoder: Any, video: jax.Array) -> jax.Array:
    """Map video `(B, F, M, M, 3)` in [-1, 1] -> latents `(B, f, M/s, M/s, C)` with the
    autoencoder's compiled encoder (one program per autoencoder, reused)."""
    return _jitted(autoencoder, "encode")(video)


class Tiling(NamedTuple):
    """How an autoencoder call splits the frame (`decode_latents`): tiles of `tile` latent
    pixels blended over `overlap`, spread over the devices of `mesh` (None: where the input
    is)."""

    tile: int
    overlap: int
    mesh: jax.sharding.Mesh | None = None


def autoencoder_function(
    autoencoder: Any, method: str, tiling: Tiling | None = None
) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """`autoencoder.<method>` as a pure function `fn(arrays, x)` of the autoencoder's arrays,
    and those arrays (None for a weightless one); with `tiling`, over spatial tiles
    (`vae.tiled_apply`). Jit it with `autoencoder.compiler_options(autoencoder)`."""
    graphdef, arrays = (
        nnx.split(autoencoder) if isinstance(autoencoder, nnx.Module) else (None, None)
    )

    def fn(arrays: Any, x: jax.Array) -> jax.Array:
        module = autoencoder if graphdef is None else nnx.merge(graphdef, arrays)
        if tiling is None:
            return getattr(module, method)(x)
        factors = (1, module.spatial_factor)  # latent -> output pixels
        in_factor, out_factor = factors if method == "decode" else factors[::-1]
        return vae_lib.tiled_apply(
            getattr(module, method), x, tile=tiling.tile, overlap=tiling.overlap,
            in_factor=in_factor, out_factor=out_factor, mesh=tiling.mesh,
        )  # fmt: skip

    return fn, arrays


@functools.lru_cache(maxsize=64)  # an encode and a decode per autoencoder replica (device group)
def _jitted(
    autoencoder: Any, method: str, tiling: Tiling | None = None
) -> Callable[[jax.Array], jax.Array]:
    """`autoencoder_function` jitted with the autoencoder's compiler options, its arrays bound;
    cached per (frozen) autoencoder, so repeated calls reuse one compiled program."""
    fn, arrays = autoencoder_function(autoencoder, method, tiling)
    options = autoencoder_lib.compiler_options(autoencoder)
    return functools.partial(jax.jit(fn, compiler_options=options), arrays)


def encode_condition(
    autoencoder: Any, condition: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Condition video `(B, F, M, M, 3)` in [-1, 1] and mask `(B, F, M, M, 1)` -> latent
    `(B, f, M/s, M/s, C)` and latent mask `(B, f, M/s, M/s, 1)` (s = spatial factor)."""
    latent = encode_video(autoencoder, condition)
    pool = functools.partial(
        autoencoder_lib.latent_mask,
        spatial_factor=autoencoder.spatial_factor,
        temporal_factor=autoencoder.temporal_factor,
    )
    return latent, jax.vmap(pool)(mask)


def _as_unit_range(video: np.ndarray | jax.Array) -> jax.Array:
    """uint8 `[0, 255]` -> float32 `[-1, 1]`; floats are taken as already in [-1, 1]."""
    video = jnp.asarray(video)
    if video.dtype == jnp.uint8:
        return video.astype(jnp.float32) / 127.5 - 1.0
    return video.astype(jnp.float32)


def image_condition(
    image: np.ndarray | jax.Array,
    map_size: int,
    num_frames: int,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    *,
    representation: Representation = Representation.VIEWPOINT,
) -> tuple[jax.Array, jax.Array]:
    """A perspective image `(h, w, 3)` known at frame 0 only (image-to-360 video).

    Returns the condition video `(F, Hm, Wm, 3)` (the projected image at frame 0, 0 elsewhere)
    and its mask `(F, Hm, Wm, 1)` (the image's coverage at frame 0, 0 on frames 1 .. F-1);
    (Hm, Wm) as in `perspective_condition`.
    """
    image = jnp.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (h, w, 3), got shape {tuple(image.shape)}")
    projected, mask = perspective_condition(
        image[None], map_size, fov_deg, yaw_deg, pitch_deg, roll_deg, representation=representation
    )
    later = num_frames - 1
    condition = jnp.concatenate([projected, jnp.zeros((later, *projected.shape[1:]))], axis=0)
    return condition, jnp.concatenate([mask, jnp.zeros((later, *mask.shape[1:]))], axis=0)


def panorama_to_canvas(
    pano_erp_video: np.ndarray | jax.Array,
    map_size: int,
    name: str = "pano_erp_video",
    *,
    representation: Representation = Representation.VIEWPOINT,
) -> jax.Array:
    """An equirectangular video `(F, H, 2H, 3)` (uint8, or float in [-1, 1]) -> its ViewPoint
    map video `(F, M, M, 3)` (the frames of `representation`, `(F, Hm, Wm, 3)`) float32 in
    [-1, 1]. ValueError naming `name` unless it is 2:1 ERP."""
    shape = tuple(np.shape(pano_erp_video))
    if len(shape) != 4 or shape[-1] != 3 or shape[2] != 2 * shape[1] or shape[0] < 1:
        raise ValueError(
            f"{name} must be a 2:1 equirectangular video (F, H, 2H, 3), got shape {shape}"
        )
    canvas_hw = geometry.canvas_size(representation, map_size)
    return geometry.erp_to_canvas(_as_unit_range(pano_erp_video), representation, canvas_hw)


def prefix_condition(
    prefix_map: np.ndarray | jax.Array, num_frames: int, temporal_factor: int
) -> tuple[jax.Array, jax.Array]:
    """The first P frames of the map known in full (continuation, long videos).

    `prefix_map` `(P, Hm, Wm, 3)` (uint8, or float in [-1, 1]) holds the known frames, with
    P = 1 + t (k - 1): exactly the pixel frames of the first k latent frames (latent frame 0 is
    frame 0, latent frame j >= 1 frames t j - t + 1 .. t j), so the pooled latent mask is 1 on the
    first k latent frames and 0 on the rest. Returns the condition video `(F, Hm, Wm, 3)` (the
    prefix, then 0) and its mask `(F, Hm, Wm, 1)` (1 on the prefix, 0 after).
    """
    prefix = _as_unit_range(prefix_map)
    known = prefix.shape[0]
    if prefix.ndim != 4 or (known - 1) % temporal_factor or not 1 <= known < num_frames:
        raise ValueError(
            f"prefix_map must be (P, Hm, Wm, 3) with P = 1 + {temporal_factor}j frames, fewer than "
            f"num_frames = {num_frames}, got shape {tuple(prefix.shape)}"
        )
    later = num_frames - known
    condition = jnp.concatenate([prefix, jnp.zeros((later, *prefix.shape[1:]))], axis=0)
    mask = jnp.zeros((num_frames, *prefix.shape[1:3], 1), jnp.float32).at[:known].set(1.0)
    return condition, mask


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


def make_conditions(
    autoencoder: Any,
    context: jax.Array,
    negative_context: jax.Array,
    map_size: int,
    num_frames: int,
    video: np.ndarray | None = None,
    fov_deg: float = 90.0,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    roll_deg: float = 0.0,
    *,
    image: np.ndarray | None = None,
    prefix_map: np.ndarray | jax.Array | None = None,
    representation: Representation = Representation.VIEWPOINT,
) -> Conditions:
    """Conditions for one sample: text `(1, L, D)` embeddings and at most one of
    - `video`: a perspective video or image `(F, h, w, 3)` uint8 over every frame, placed at
      (yaw, pitch, roll) with horizontal `fov_deg`; its frame count is used (it must be 1 + 4k);
    - `image`: a perspective image `(h, w, 3)` known at frame 0 only (`image_condition`), same
      placement, `num_frames` frames;
    - `prefix_map`: the first P = 1 + 4j frames of the map `(P, Hm, Wm, 3)` known in full
      (`prefix_condition`), `num_frames` frames.

    With none of them the map is all unknown (text-to-360): the condition is an all-zero video
    with mask 0, for `num_frames` frames. The map is the frame of `representation`, (Hm, Wm) =
    `geometry.canvas_size(representation, map_size)` ((M, M) for the ViewPoint map).
    """
    temporal = autoencoder.temporal_factor
    given = [
        n
        for n, v in (("video", video), ("image", image), ("prefix_map", prefix_map))
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of video, image, prefix_map; got {given}")
    if video is None:
        frames = valid_frame_count(num_frames, temporal)
        if frames != num_frames:
            raise ValueError(f"num_frames must be 1 + {temporal}k, got {num_frames}")
    canvas_hw = geometry.canvas_size(representation, map_size)
    place = dict(fov_deg=fov_deg, yaw_deg=yaw_deg, pitch_deg=pitch_deg, roll_deg=roll_deg)
    if image is not None:
        condition, mask = image_condition(
            image, map_size, num_frames, **place, representation=representation
        )
    elif prefix_map is not None:
        if tuple(np.shape(prefix_map))[1:] != (*canvas_hw, 3):
            raise ValueError(
                f"prefix_map must be (P, {canvas_hw[0]}, {canvas_hw[1]}, 3), got "
                f"{np.shape(prefix_map)}"
            )
        condition, mask = prefix_condition(prefix_map, num_frames, temporal)
    elif video is None:
        condition = jnp.zeros((num_frames, *canvas_hw, 3), jnp.float32)
        mask = jnp.zeros((num_frames, *canvas_hw, 1), jnp.float32)
    else:
        if (len(video) - 1) % temporal:
            raise ValueError(
                f"the condition video has {len(video)} frames; frame counts must be 1 + {temporal}k"
            )
        condition, mask = perspective_condition(
            video, map_size, **place, representation=representation
        )
    latent, mask = encode_condition(autoencoder, condition[None], mask[None])
    return Conditions(
        context=jnp.asarray(context, jnp.float32),
        negative_context=jnp.asarray(negative_context, jnp.float32),
        latent=latent.astype(jnp.float32),
        mask=mask,
    )


# --- Latents -> pixels ---------------------------------------------------------------------------


# Decode tiles, in latent pixels: Wan's tiled VAE decode (256 px tiles, 64 px overlap).
DECODE_TILE, DECODE_TILE_OVERLAP = 32, 8


def replicate(autoencoder: Any, mesh: jax.sharding.Mesh) -> Any:
    """The autoencoder with its weights (if any) replicated on every device of `mesh`, which
    `decode_latents(..., mesh=mesh)` spreads its tiles over; returns it (modules updated in
    place)."""
    if isinstance(autoencoder, nnx.Module):
        everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        nnx.update(autoencoder, jax.device_put(nnx.state(autoencoder), everywhere))
    return autoencoder


def decode_latents(
    autoencoder: Any,
    latents: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
    tile: int | None = DECODE_TILE,
    tile_overlap: int = DECODE_TILE_OVERLAP,
) -> jax.Array:
    """Map latents `(B, f, h, w, C)` -> map video `(B, F, M, M, 3)` in [-1, 1] (clipped).

    Decodes overlapping spatial tiles of `tile` latent pixels blended over `tile_overlap`
    (`vae.tiled_apply`; one tile, the exact decode, when the frame is no larger; `tile=None`:
    the whole frame), spread over every device of `mesh`, one tile per device at a time, with
    the autoencoder's weights replicated there (`replicate`). The result is the one-device
    result up to fp32 rounding. Each tile runs over all frames, so the Wan VAE's causal cache
    is as untiled.
    """
    tiling = None if tile is None else Tiling(tile, tile_overlap, mesh)
    if mesh is not None:
        everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        latents = jax.device_put(latents, everywhere)
    decoded = _jitted(autoencoder, "decode", tiling)(latents)
    return jnp.clip(decoded.astype(jnp.float32), -1.0, 1.0)


@functools.partial(jax.jit, static_argnames=("height", "width", "representation"))
def canvas_to_panorama(
    map_video: jax.Array,
    height: int,
    width: int,
    representation: Representation = Representation.VIEWPOINT,
) -> jax.Array:
    """Map video `(..., M, M, 3)` -> ERP `(..., height, width, 3)`, blending the overlapping
    copies of each sphere region (the final pixel-space fusion); frames of another
    `representation` `(..., Hm, Wm, 3)` -> ERP by `geometry.canvas_to_erp`."""
    return geometry.canvas_to_erp(map_video, representation, height, width)


def decode_to_panorama(
    autoencoder: Any,
    latents: jax.Array,
    height: int,
    width: int,
    representation: Representation = Representation.VIEWPOINT,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Map latents `(B, f, h, w, C)` -> (map video `(B, F, Hm, Wm, 3)`, ERP video
    `(B, F, height, width, 3)`), both in [-1, 1]; the ERP blends the overlapping copies (of the
    ViewPoint map; other representations: `canvas_to_panorama`). The decode is spread over `mesh`
    (`decode_latents`)."""
    map_video = decode_latents(autoencoder, latents, mesh=mesh)
    return map_video, canvas_to_panorama(map_video, height, width, representation)
