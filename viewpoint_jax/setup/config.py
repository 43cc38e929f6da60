"""The training config: its schema (`base_config`, which `configs/*.py` start from), its
validation (`validate_config`: a bad value fails at start with a message naming its key) and the
config-file loader (`load_config_file("configs/wan.py:14b")`). Recipes live in `configs/`.

Schema:

    config.seed, num_steps                       run length and the seed of init, noise, data order
    config.model        preset ("tiny" | "wan_1_3b" | "wan_14b") + DiTConfig fields (None: preset's)
                        init_checkpoint: a converted Wan DiT directory; "" = random init for
                        the tiny preset, refused for the Wan presets ("none": from scratch, asked)
    config.lora         `lora_config()`: rank (0 = off), alpha, targets, train_norms: LoRA
                        fine-tuning of the converted DiT in init_checkpoint (training/lora.py)
    config.autoencoder  kind ("space_to_depth" | "block_dct" | "wan_vae"), factor, channels (block_dct),
                        checkpoint (wan_vae)
    config.text_encoder kind ("tiny_random" | "umt5"), checkpoint, tokenizer, max_length, seed,
                        precompute (embed each distinct caption once, when first seen; cached per host in cache_dir)
    config.data         `data_config()`: source (`DataSource`), dataset, ERP/map/clip sizes, the
                        representation the DiT sees (viewpoint | erp | cube_2x3), conditions (the
                        mixture of condition kinds, condition_mixture), batching; scenes: the
                        perspective clips of the "demo_scenes" source
    config.diffusion    timestep_sampler ("logit_normal" | "shifted_uniform"), shift, logit_mean/std,
                        loss ("velocity" | "clean")
    config.optim        AdamW: lr, warmup_steps, schedule, b1, b2, eps, weight_decay, grad_clip,
                        mu_dtype, ema_decay (0 = no EMA)
    config.mesh         data, fsdp, sequence, tensor (one may be -1: the remaining devices)
    config.sharding_rules  logical axis -> mesh axes (viewpoint_jax.common.sharding.DEFAULT_RULES)
    config.checkpoint   every_steps, keep, async_save
    config.log          every_steps, image_every_steps, peak_tflops (0: by device kind)
    config.max_consecutive_nonfinite  stop after this many NaN/Inf losses in a row
    config.sample       sampler defaults: scheduler, steps, shift, guidance_scale, fuse_every_step,
                        keep_known
"""

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections

from viewpoint_jax.common import sharding
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.common.sharding import DEFAULT_RULES, MESH_AXES
from viewpoint_jax.data import panoramic_videos
from viewpoint_jax.data.config import (
    DataSource,
    canvas_hw,
    data_config,
    data_representation,
    data_source,
    fail,
    positive_int,
    validate_data_config,
)
from viewpoint_jax.diffusion.flow_matching import Loss
from viewpoint_jax.geometry import Representation
from viewpoint_jax.models import attention as attention_lib
from viewpoint_jax.models.autoencoder import BlockDCTAutoencoder
from viewpoint_jax.models.dit import PRESETS, BlockKind, DiTConfig, LoRATarget, RopeLayout
from viewpoint_jax.models.vae import WanVAEConfig

# The DiTConfig fields a config may set, with their types: None keeps the preset's value, as a
# typed placeholder, so that the command line can set it too (`--config.model.dim=48`).
DIT_FIELDS = {
    "dim": int,
    "ffn_dim": int,
    "num_heads": int,
    "num_layers": int,
    "freq_dim": int,
    "attention_pattern": object,  # a name or a tuple of block kinds
    "attention_backend": str,
    # "gather" | "ulysses" | "ring": self-attention over tokens split on mesh.sequence
    # (models/attention.py's SequenceParallel)
    "sequence_parallel": str,
    "prediction": str,
    "rope_layout": str,  # "grid" (Wan's 3D RoPE) | "cube_faces" (CP-4DRoPE, on cube_2x3 only)
    "remat_policy": str,
    "dtype": str,
    "param_dtype": str,
}


def diffusion_loss(diffusion: ml_collections.ConfigDict) -> Loss:
    """`config.diffusion.loss` (a run saved before the key existed: the velocity, Wan's)."""
    return Loss(diffusion.get("loss", Loss.VELOCITY))


def takes_condition(config: ml_collections.ConfigDict) -> bool:
    """Whether the config's DiT takes the condition latent and mask (see `DataSource`)."""
    return data_source(config.data) == DataSource.PANORAMAS


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The DiTConfig fields `config.model` sets (None keeps the preset's value)."""
    overrides = {k: config.model[k] for k in DIT_FIELDS if config.model.get(k) is not None}
    if isinstance(overrides.get("attention_pattern"), list):
        overrides["attention_pattern"] = tuple(overrides["attention_pattern"])
    return overrides


def lora_config() -> ml_collections.ConfigDict:
    """`config.lora`: LoRA fine-tuning (rank 0: every weight trains, as before).

    rank         the adapters' rank (0 = off); PanoWan's is 64
    alpha        the update is scaled by alpha / rank (0: alpha = rank, scale 1)
    targets      LoRATarget values: self_q/k/v/o (Pano and subregion attention), cross_q/k/v/o,
                 ffn (both FFN layers)
    train_norms  also train the norms and the modulation in full (the patch embedding always is)
    scale        the adapters' weight at sampling (1 in training; `sample --lora_scale`)
    """
    lora = ml_collections.ConfigDict()
    lora.rank = 0
    lora.alpha = 0.0
    lora.targets = tuple(t.value for t in LoRATarget)[:4]  # self-attention q, k, v, o
    lora.train_norms = False
    lora.scale = 1.0
    return lora


def lora_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The DiTConfig LoRA fields of `config.lora` (a config saved before it existed: none)."""
    lora = config.get("lora")
    if lora is None or not lora.rank:
        return {}
    return dict(
        lora_rank=lora.rank,
        lora_alpha=lora.alpha,
        lora_targets=tuple(lora.targets),
        lora_scale=lora.get("scale", 1.0),
    )


def lora_enabled(config: ml_collections.ConfigDict) -> bool:
    return bool(config.get("lora") is not None and config.lora.rank)


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_steps = 1000

    config.model = ml_collections.ConfigDict()
    config.model.preset = "tiny"
    # DiTConfig fields; None keeps the preset's value. in_dim, out_dim and text_dim follow the
    # autoencoder and text encoder (2 C + 1 in, C out) and are not set here.
    for field, kind in DIT_FIELDS.items():
        config.model[field] = ml_collections.config_dict.placeholder(kind)
    config.model.init_checkpoint = ""
    config.lora = lora_config()

    config.autoencoder = ml_collections.ConfigDict()
    config.autoencoder.kind = "space_to_depth"
    config.autoencoder.factor = 8
    config.autoencoder.channels = 16  # block_dct only: the latent channels it keeps
    config.autoencoder.checkpoint = ""

    config.text_encoder = ml_collections.ConfigDict()
    config.text_encoder.kind = "tiny_random"
    config.text_encoder.checkpoint = ""  # a converted umT5 directory (kind "umt5")
    config.text_encoder.tokenizer = ""  # a SentencePiece model ("" with tiny_random: bytes)
    config.text_encoder.max_length = 512
    config.text_encoder.seed = 0  # tiny_random: the same seed gives the same encoder at sampling
    config.text_encoder.precompute = False
    config.text_encoder.cache_dir = ""  # "" = <workdir>/text_cache

    config.data = data_config()

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.timestep_sampler = "logit_normal"
    config.diffusion.shift = 1.0
    config.diffusion.logit_mean = 0.0
    config.diffusion.logit_std = 1.0
    config.diffusion.loss = Loss.VELOCITY.value  # Wan's; "clean": flow_matching.Loss

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 100
    config.optim.schedule = "constant"  # after warmup: "constant" | "cosine"
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0
    config.optim.mu_dtype = "float32"
    config.optim.ema_decay = 0.0

    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, sequence=1, tensor=1))
    config.sharding_rules = tuple((name, axes) for name, axes in DEFAULT_RULES)

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 500
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True

    config.log = ml_collections.ConfigDict()
    config.log.every_steps = 10
    config.log.image_every_steps = 500
    config.log.peak_tflops = 0.0  # per device; 0: looked up from the device kind (bf16 dense)

    config.max_consecutive_nonfinite = 10

    config.sample = ml_collections.ConfigDict()
    config.sample.scheduler = "unipc"
    config.sample.steps = 50
    config.sample.shift = 5.0
    config.sample.guidance_scale = 5.0
    config.sample.fuse_every_step = False
    config.sample.keep_known = False  # hold the view's latent cells (denoising.known_cells)
    return config


AUTOENCODERS = ("space_to_depth", "block_dct", "wan_vae")
# The parameter-free stand-ins for the Wan VAE: (spatial factor, no temporal compression).
PIXEL_AUTOENCODERS = ("space_to_depth", "block_dct")
TEXT_ENCODERS = ("tiny_random", "umt5")
TIMESTEP_SAMPLERS = ("logit_normal", "shifted_uniform")
SCHEDULES = ("constant", "cosine")


def packaged_config(name: str) -> Path:
    """A config file of this installation by name ("tiny.py"): inside the package where a wheel
    installs `configs/` (pyproject.toml ships it as viewpoint_jax/configs), else `configs/`
    beside the package (a checkout, an editable install)."""
    package = Path(__file__).resolve().parents[1]
    folders = (package / "configs", package.parent / "configs")
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no config {name} in {folders[0]} or {folders[1]}")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> that file's `get_config(arg)`; UserError naming a bad file."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise UserError(f"--config: no such file {path}")
    module_spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"--config: {path} defines no get_config()")
    return module.get_config(arg or None)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """A config written by `to_json_best_effort` (a run's config.json), back as a ConfigDict.
    JSON has no tuples: the lists become tuples again, as the config files write them (the
    sharding rules and ranges are tuples, and a list would be read as a pytree of leaves)."""

    def tuples(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: tuples(item) for key, item in value.items()}
        if isinstance(value, list):
            return tuple(tuples(item) for item in value)
        return value

    return ml_collections.ConfigDict(tuples(json.loads(text)))


def run_config_from_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """A training run's config.json (what `sample --checkpoint RUN` samples with) read through
    the schema: its values over `base_config()`, each section a JSON object, each value of its
    key's type, then the checks of the model, encoders, sizes and representation. UserError
    naming the file (and the key) for a file that is not such a config."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path} ({error})") from None
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path} is not valid JSON ({error.msg}: line {error.lineno} column {error.colno}); "
            "the training run writes it (or pass --config)"
        ) from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(record).__name__}")
    if "data" not in record:
        raise UserError(
            f"{path} has no 'data' section: not a training run's config (pass --config)"
        )
    config = base_config()
    _merge_record(config, record, path, "")
    try:
        if config.model.preset not in PRESETS:
            fail("model.preset", f"must be one of {PRESETS}, got {config.model.preset!r}")
        DiTConfig.preset(config.model.preset, **model_overrides(config))
        _validate_encoders_and_sizes(config)
        _validate_representation(config)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise UserError(f"{path}: {error}") from None
    return config


def _merge_record(schema: ml_collections.ConfigDict, record: dict, path: Path, prefix: str) -> None:
    """Sets `record`'s values on `schema` (in place); UserError naming `path` and the key."""
    for key, value in record.items():
        name = f"config.{prefix}{key}"
        if isinstance(schema.get(key), ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise UserError(f"{path}: {name} must be a section (a JSON object), got {value!r}")
            _merge_record(schema[key], value, path, f"{prefix}{key}.")
            continue
        value = config_from_json(json.dumps({"v": value})).v  # lists as tuples
        try:
            schema[key] = value
        except (TypeError, ValueError, AttributeError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"{path}: {name} has the wrong type ({first})") from None


# The presets the paper fine-tunes from Wan2.1's weights: a run of one starts from converted
# weights (config.model.init_checkpoint) unless from-scratch training is asked for by name.
WAN_PRESETS = ("wan_1_3b", "wan_14b")
FROM_SCRATCH = "none"
CONVERT_DIT_COMMAND = (
    "python -m viewpoint_jax.convert_wan dit --src /weights/Wan2.1-T2V-14B --dst /ckpt/wan14b_dit "
    "--in_dim=33 --dtype=bfloat16"
)


def init_checkpoint(config: ml_collections.ConfigDict) -> str | None:
    """The converted DiT directory a run starts from (`config.model.init_checkpoint`), or None
    for a random init ("" or "none")."""
    value = str(config.model.get("init_checkpoint", "") or "")
    return None if value in ("", FROM_SCRATCH) else value


def check_run_inputs(config: ml_collections.ConfigDict, *, reads_dataset: bool = True) -> None:
    """Before a training run builds anything: every input it reads is named and exists (the
    dataset only if `reads_dataset`), and a Wan-size DiT starts from converted weights unless
    `config.model.init_checkpoint` is "none". ValueError listing every problem at once, one line
    each, naming its key (one problem: the line alone)."""
    problems = []
    model = config.model
    if model.preset in WAN_PRESETS and not model.get("init_checkpoint", ""):
        problems.append(
            f"config.model.init_checkpoint: preset {model.preset!r} is fine-tuned from converted "
            f"Wan2.1 weights (the paper's premise); convert them with `{CONVERT_DIT_COMMAND}` and "
            f"pass --config.model.init_checkpoint=/ckpt/wan14b_dit, or "
            f"--config.model.init_checkpoint={FROM_SCRATCH} to train from scratch"
        )
    # key -> (path, what it should be); "" where the config's kinds need none
    paths = {"model.init_checkpoint": (init_checkpoint(config), "a converted DiT directory")}
    if config.autoencoder.kind == "wan_vae":
        paths["autoencoder.checkpoint"] = (
            config.autoencoder.checkpoint,
            "a converted VAE directory",
        )
    if config.text_encoder.kind == "umt5":
        te = config.text_encoder
        paths["text_encoder.checkpoint"] = (te.checkpoint, "a converted umT5 directory")
        paths["text_encoder.tokenizer"] = (te.tokenizer, "umT5's spiece.model or its folder")
    for key, (path, what) in paths.items():
        if key == "model.init_checkpoint" and not path:
            continue  # random init, allowed (or refused above)
        if not path:
            problems.append(f"config.{key}: not set; it needs {what}")
        elif not (Path(path).exists() if key == "text_encoder.tokenizer" else Path(path).is_dir()):
            problems.append(f"config.{key}: {path} does not exist; it needs {what}")
    data = config.data
    reads_records = not data.get("precomputed_latents", "")
    if reads_dataset and data_source(data) == DataSource.PANORAMAS and reads_records:
        try:
            panoramic_videos.dataset_dir(data.data_dir, data.name)
        except ValueError as error:
            problems.append(f"config.data.data_dir, config.data.name: {error}")
    if len(problems) > 1:
        raise ValueError("\n".join([f"{len(problems)} problems with the run's inputs:", *problems]))
    if problems:
        raise ValueError(problems[0])


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """`config.mesh` with a -1 axis resolved; ValueError naming `config.mesh` if it cannot fit."""
    unknown = set(config.mesh.keys()) - set(MESH_AXES)
    if unknown:
        fail("mesh", f"unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
    sizes = {axis: config.mesh.get(axis, 1) for axis in MESH_AXES}
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            fail(f"mesh.{axis}", f"must be a positive integer or -1, got {size!r}")
    rest = [axis for axis, size in sizes.items() if size == -1]
    if len(rest) > 1:
        fail("mesh", f"at most one axis may be -1, got {rest}")
    known = 1
    for size in sizes.values():
        known *= 1 if size == -1 else size
    if rest:
        if num_devices % known:
            fail("mesh", f"{sizes} cannot be filled with {num_devices} devices")
        sizes[rest[0]] = num_devices // known
    elif known != num_devices:
        fail("mesh", f"{sizes} needs {known} devices, but {num_devices} are available")
    return sizes


def mesh_and_rules(
    config: ml_collections.ConfigDict, devices: list[jax.Device]
) -> tuple[jax.sharding.Mesh, sharding.LogicalRules]:
    """The config's mesh over `devices` and its logical-axis rules."""
    return sharding.make_mesh(mesh_shape(config, len(devices)), devices), logical_rules(config)


def logical_rules(config: ml_collections.ConfigDict) -> sharding.LogicalRules:
    """`config.sharding_rules` as a rules tuple (mesh-axis lists, as JSON stores them, as tuples)."""
    return tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes)
        for name, axes in config.sharding_rules
    )


def validate_config(
    config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1
) -> None:
    """Checks a training config before anything is built; ValueError names the offending key."""
    positive_int(config, "num_steps")
    positive_int(config, "max_consecutive_nonfinite")
    if config.model.preset not in PRESETS:
        fail("model.preset", f"must be one of {PRESETS}, got {config.model.preset!r}")
    try:  # the model fields are checked by DiTConfig itself
        DiTConfig.preset(config.model.preset, **model_overrides(config))
    except (TypeError, ValueError) as error:
        fail("model", str(error))
    _validate_encoders_and_sizes(config)
    _validate_lora(config)
    _validate_representation(config)
    _validate_training(config)
    _validate_mesh(config, num_devices, process_count)


def autoencoder_factors(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(spatial, temporal) compression of `config.autoencoder`, without building it."""
    if config.autoencoder.kind in PIXEL_AUTOENCODERS:
        return int(config.autoencoder.factor), 1
    wan = WanVAEConfig()  # the released Wan2.1 VAE's compression
    return wan.spatial_factor, wan.temporal_factor


def _validate_encoders_and_sizes(config: ml_collections.ConfigDict) -> None:
    ae = config.autoencoder
    if ae.kind not in AUTOENCODERS:
        fail("autoencoder.kind", f"must be one of {AUTOENCODERS}, got {ae.kind!r}")
    if ae.kind in PIXEL_AUTOENCODERS:
        positive_int(config, "autoencoder.factor")
    if ae.kind == "block_dct":
        try:  # the autoencoder's own rule (building it reads nothing)
            BlockDCTAutoencoder(int(ae.factor), int(ae.get("channels", 0)))
        except ValueError as error:
            fail("autoencoder.channels", str(error).removeprefix("channels "))
    spatial, temporal = autoencoder_factors(config)
    te = config.text_encoder
    if te.kind not in TEXT_ENCODERS:
        fail("text_encoder.kind", f"must be one of {TEXT_ENCODERS}, got {te.kind!r}")
    # The paths kinds need (a converted VAE, umT5 and its tokenizer) are checked, all at once, by
    # check_run_inputs.
    positive_int(config, "text_encoder.max_length")

    data = config.data
    validate_data_config(data)
    # The latent (map / spatial factor) splits into 2 x 2 patches, whose token grid splits into
    # the 4 subregions of the map: the map side is a multiple of 4 * patch * spatial factor.
    multiple = 2 * 2 * spatial
    representation = data_representation(data)
    if representation == Representation.VIEWPOINT and data.map_size % multiple:
        fail("data.map_size", f"must be a multiple of {multiple}, got {data.map_size}")
    height, width = canvas_hw(data)
    if height % (multiple // 2) or width % (multiple // 2):
        fail(
            "data.representation",
            f"{representation.value!r} frames of map_size {data.map_size} are {height}x{width}, "
            f"not multiples of {multiple // 2} (autoencoder factor {spatial} x patch 2)",
        )
    if data_source(data) == DataSource.DEMO_SCENES:
        # A perspective clip's latent splits into patches, and into subregions only if it has
        # subregion blocks (plain Wan pretraining has none).
        kinds = DiTConfig.preset(config.model.preset, **model_overrides(config)).block_kinds
        multiple = (4 if BlockKind.SUBREGION in kinds else 2) * spatial
        if any(side % multiple for side in data.scenes.size):
            fail("data.scenes.size", f"must be multiples of {multiple}, got {data.scenes.size}")
    if (data.num_frames - 1) % temporal:
        fail(
            "data.num_frames",
            f"must be 1 + {temporal}k for this autoencoder, got {data.num_frames}",
        )


def _validate_lora(config: ml_collections.ConfigDict) -> None:
    lora = config.get("lora")
    if lora is None:
        return
    rank = lora.get("rank", 0)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        fail("lora.rank", f"must be an integer >= 0 (0 = no LoRA), got {rank!r}")
    if not rank:
        return
    if not lora.alpha >= 0:
        fail("lora.alpha", f"must be >= 0 (0: the rank), got {lora.alpha}")
    targets = tuple(lora.targets)
    unknown = [t for t in targets if t not in tuple(LoRATarget)]
    if unknown or not targets:
        fail("lora.targets", f"must name some of {[t.value for t in LoRATarget]}, got {targets}")
    if not config.model.init_checkpoint:
        fail(
            "lora.rank",
            "LoRA fine-tunes a converted DiT: set config.model.init_checkpoint to its directory",
        )


def _validate_representation(config: ml_collections.ConfigDict) -> None:
    """Subregions and their overlaps exist only in the ViewPoint map: refuse asking for them in
    another representation."""
    representation = data_representation(config.data)
    model = DiTConfig.preset(config.model.preset, **model_overrides(config))
    if model.rope_layout == RopeLayout.CUBE_FACES and representation != Representation.CUBE_2X3:
        fail(
            "model.rope_layout",
            "'cube_faces' gives the tokens of a 2 x 3 cube-face raster 4D positions; "
            f"config.data.representation is {representation.value!r}: use 'cube_2x3'",
        )
    if representation == Representation.VIEWPOINT:
        return
    if BlockKind.SUBREGION in model.block_kinds:
        fail(
            "model.attention_pattern",
            f"{model.attention_pattern!r} has subregion blocks, which split the ViewPoint map "
            f"into its 4 subregions; config.data.representation {representation.value!r} has "
            "none: use 'pano'",
        )
    if config.sample.get("fuse_every_step", False):
        fail(
            "sample.fuse_every_step",
            "fuses the ViewPoint map's overlapping subregions; config.data.representation "
            f"{representation.value!r} has none: set it to False",
        )


def _validate_training(config: ml_collections.ConfigDict) -> None:
    diffusion = config.diffusion
    if diffusion.timestep_sampler not in TIMESTEP_SAMPLERS:
        fail(
            "diffusion.timestep_sampler",
            f"must be one of {TIMESTEP_SAMPLERS}, got {diffusion.timestep_sampler!r}",
        )
    if not diffusion.shift > 0:
        fail("diffusion.shift", f"must be > 0, got {diffusion.shift}")
    if not diffusion.logit_std > 0:
        fail("diffusion.logit_std", f"must be > 0, got {diffusion.logit_std}")
    if diffusion.get("loss", Loss.VELOCITY) not in tuple(Loss):
        fail("diffusion.loss", f"must be one of {[k.value for k in Loss]}, got {diffusion.loss!r}")

    optim = config.optim
    if not optim.lr > 0:
        fail("optim.lr", f"must be > 0, got {optim.lr}")
    if optim.warmup_steps < 0:
        fail("optim.warmup_steps", f"must be >= 0, got {optim.warmup_steps}")
    if optim.schedule not in SCHEDULES:
        fail("optim.schedule", f"must be one of {SCHEDULES}, got {optim.schedule!r}")
    if optim.grad_clip < 0:
        fail("optim.grad_clip", f"must be >= 0 (0 = no clipping), got {optim.grad_clip}")
    if not 0.0 <= optim.ema_decay < 1.0:
        fail("optim.ema_decay", f"must be in [0, 1) (0 = no EMA), got {optim.ema_decay}")
    if optim.mu_dtype not in ("float32", "bfloat16"):
        fail("optim.mu_dtype", f"must be float32 or bfloat16, got {optim.mu_dtype!r}")

    positive_int(config, "checkpoint.every_steps")
    positive_int(config, "checkpoint.keep")
    positive_int(config, "log.every_steps")
    if config.log.image_every_steps < 0:
        fail("log.image_every_steps", "must be >= 0 (0 = never)")


def _validate_mesh(config: ml_collections.ConfigDict, num_devices: int, process_count: int):
    data = config.data
    sizes = mesh_shape(config, num_devices)
    batch_shards = sizes["data"] * sizes["fsdp"]
    if data.batch_size % batch_shards:
        fail(
            "data.batch_size",
            f"{data.batch_size} must be divisible by the mesh's data x fsdp = {batch_shards}",
        )
    if data.batch_size % process_count:
        fail("data.batch_size", f"{data.batch_size} must be divisible by the {process_count} hosts")
    for entry in config.sharding_rules:
        if len(entry) != 2:
            fail("sharding_rules", f"entries are (logical name, mesh axes), got {entry!r}")
        name, axes = entry
        targets = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        if not set(targets) <= set(MESH_AXES):
            fail("sharding_rules", f"{name!r} maps to {axes!r}, not axes of {MESH_AXES}")
    _validate_sequence_parallel(config, sizes)


def _validate_sequence_parallel(config: ml_collections.ConfigDict, sizes: dict[str, int]) -> None:
    """Ulysses splits each device's heads over the devices that split the tokens: they must
    divide (the attention's own check, at start instead of at the first trace)."""
    model = DiTConfig.preset(config.model.preset, **model_overrides(config))
    if model.sequence_parallel != attention_lib.SequenceParallel.ULYSSES:
        return
    rules = dict(logical_rules(config))
    heads, sequence = model.num_heads, _axes_size(rules.get("length"), sizes)
    head_shards = _axes_size(rules.get("act_heads"), sizes)
    if heads % head_shards == 0:  # else the heads are not split (sharding drops the axis)
        heads //= head_shards
    try:
        attention_lib.check_ulysses_heads(heads, sequence)
    except ValueError as error:
        fail("model.sequence_parallel", str(error))


def _axes_size(axes: str | tuple[str, ...] | None, sizes: dict[str, int]) -> int:
    """How many devices a logical axis mapped to `axes` is split over."""
    targets = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(sizes[a] for a in targets)
