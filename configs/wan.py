"""ViewPoint on Wan2.1-T2V, both model sizes: the paper's settings where the paper states them,
our choices where it does not (docs/paper-recipe.md lists every setting, which is which and why).

    --config configs/wan.py:14b     Wan2.1-T2V-14B; also configs/wan14b.py
    --config configs/wan.py:1_3b    Wan2.1-T2V-1.3B, fits one 80 GB device; also configs/wan1_3b.py
    --config configs/wan.py:14b_all_conditions, :1_3b_all_conditions
                                    this project's extension, not the paper: one model for every
                                    condition kind (text only, a view at frame 0, a known prefix,
                                    2-3 views; data/conditions.py DEFAULT_CONDITION_MIXTURE)
    --config configs/wan.py:14b_lora   the same with LoRA (config.lora) instead of every weight
    --config configs/wan.py:1_3b_lora
    --config configs/wan.py:14b_2k, :1_3b_2k
                                    2K: 1024 x 2048 ERP clips -> 1280 x 1280 maps, 49 frames
                                    (83,200 tokens), remat full, the tokens split over a
                                    sequence axis where the size needs it (below, "2K")

Paper: the ViewPoint map, Pano and Perspective (subregion) attention, the condition (one
perspective video projected onto the map: `condition_mixture = {perspective_video: 1}`), joint
image and video training (as this project reads the paper), fine-tuning a pretrained video DiT,
here Wan2.1 (a Wan-size run without `model.init_checkpoint` is refused;
`--config.model.init_checkpoint=none` trains from scratch).
Ours: 512 x 1024 ERP clips of 49 frames -> 640 x 640 maps (latents 13 x 80 x 80 x 16, 20800
tokens), lr 1e-4, AdamW, 10,000 steps, warmup 100, grad clip 1.0, batch 1 per device (8 global),
image share 0.2, strict alternation of Pano and subregion blocks, bf16 compute with fp32 master
weights and optimizer state, FSDP over every device, umT5-XXL embeddings precomputed once. Per
size: Wan's flow shift (5 for 14B, 3 for 1.3B; sampling: Wan's UniPC, 50 steps, guidance 5) and
the remat policy that fits 80 GB (full for 14B, saving the matmul outputs for 1.3B).

On TPU (`--config.model.attention_backend=splash`; `python -m viewpoint_jax.compile` compiles the
step for a slice and says whether it fits; BENCHMARKS.md, "Compiled for the chips"): the 14B
recipe does NOT fit a v5p-8 (4 chips): XLA's memory analysis of the compiled step is 102.1 GiB
per chip (40.7 arguments, 61.1 temporaries) against 95 GiB; on a v5p-16 (8 chips, v5p:2x2x2) the
same step compiled at 71.0 GiB per chip (issue 29's compile): train 14B on v5p-16 or larger. On v6e (32 GiB per chip) the
analytic plan alone is 42.6 GiB per chip at 8 chips, and the compiled 14B steps run 28-33 GiB
above it: neither size's recipe fits a v6e-8 as it stands (not compiled here; 1.3B compiles at
42.8 GiB per chip on v5p-8, 6% over its plan, whose save_dots activations alone are 35 GiB: use
remat full there).

    python -m viewpoint_jax.train --config configs/wan14b.py --workdir runs/vp14b \\
        --config.model.init_checkpoint=/ckpt/wan14b_dit \\
        --config.autoencoder.checkpoint=/ckpt/wan_vae \\
        --config.text_encoder.checkpoint=/ckpt/umt5_xxl \\
        --config.text_encoder.tokenizer=/ckpt/umt5_xxl/spiece.model \\
        --config.data.data_dir=/data/tfds --config.data.name=my_panoramas

LoRA (`:14b_lora`, `:1_3b_lora`): rank-64 adapters (PanoWan's rank) on the self-attention's
q, k, v, o of every block (Pano and subregion attention: what changes from perspective video to
the map), alpha 64 (alpha / rank = 1: the update as trained, at any rank); the inflated patch
embedding trains in full (its condition channels start at zero), everything else is frozen, its
matmul kernels held in bf16 (training/lora.py). Trainable: 23.8 M parameters for 1.3B, 105.5 M
for 14B; the run's checkpoints hold those and their AdamW moments (BENCHMARKS.md, "LoRA").
Memory per device: 14B LoRA with the full remat of the 14B recipe and no offload fits one 80 GB
GPU with --config.data.batch_size=1 (analytic 44.45 GiB; compiled for one TPU v5p chip, the
nearest measured program, 62.24 GiB: `python -m viewpoint_jax.compile --config
configs/wan.py:14b_lora --target v5p-8 --chips 1`) and a v5p-8 (compiled 37.71 GiB per chip);
not a v6e-8 (compiled 33.27 GiB per chip of 32: the activations FSDP does not split; a sequence
axis with Ulysses would);
the frozen bf16 base alone is 27 GiB unsharded (BENCHMARKS.md, "LoRA").

    python -m viewpoint_jax.train --config configs/wan.py:14b_lora --workdir runs/vp14b_lora \\
        --config.model.init_checkpoint=/ckpt/wan14b_dit ...   # as above
    python -m viewpoint_jax.sample --checkpoint runs/vp14b_lora --lora_scale 1.0 ...
    python -m viewpoint_jax.convert_wan merge --src runs/vp14b_lora --dst /ckpt/vp14b_merged

2K (`:14b_2k`, `:1_3b_2k`; this project's extension, issue 33): the recipe of the size at
1024 x 2048 ERP (`prepare_dataset --height 1024`) and map 1280 (160 x 160 latents of 13 frames,
83,200 tokens: 4x the tokens and 16x the Pano attention of 1K), remat full for both sizes (the
1.3B's save_dots needs 115.8 GB of temporaries per v5p chip here), the weights sharded over
fsdp and sequence together (`sharding_rules`: `embed` -> both), so a sequence axis splits the
tokens without holding more weights or optimizer state per device. The VAE encodes a 2K map in
tiles of the 1K size (`models.autoencoder.encode_tiled`) and decodes in its usual tiles;
precomputing the latents (`precompute_latents`) takes it out of the step altogether.
Memory per device, analytic (`python tools/memory_plan.py --config configs/wan.py:14b_2k --search
--devices 4,8,16 --hbm_gb 102.8 --headroom_gib 26`; BENCHMARKS.md "2K"): the plan runs ~25 GiB
under the compiled step at 2K (the issue's compiles on 8 v5p chips, fsdp 8: 1.3B 49.8 GiB against
a plan of 23.8; 14B ~114 against 90.3), so a mesh "fits" when plan + 26 GiB fits the chip:
  1_3b_2k  smallest: 4 devices, fsdp 4 (v5p-8): plan 26.5 GiB per chip, + 26 = 52.5 of 95.7;
           COMPILED for v5p-8: 40.04 GiB per chip, fits with 54.96 free;
           the mesh is the 1K one (fsdp over every device, batch 8); also 8 x 80 GB GPUs
           (49.8 GiB) and, tightly, one (68.3 of 74.5 GiB, --config.data.batch_size=1).
  14b_2k   smallest: 8 devices (v5p-16): fsdp 2 x sequence 4, one sample per 4 chips (batch 2):
           plan 48.9 GiB per chip, + 26 = 74.9 of 95.7; COMPILED for v5p-16 (`python -m
           viewpoint_jax.compile --config configs/wan.py:14b_2k --target v5p-16`): 78.55 GiB
           per chip, fits with 16.45 free (fsdp 4 x sequence 2: 90.8 by the plan, tight;
           fsdp 8 without a sequence axis: 116, refused as the issue's compile was; any 4-chip
           mesh: >= 101); on 80 GB GPUs: 8 of them with sequence 8 (67 GiB).
Sampling at 2K (`tools/memory_plan.py --mode sample`, bf16, the guidance batch of 2): both sizes
on one 80 GB device by the plan (1.3B 13.4 GiB, 14B 52.6); 14B compiled for a v5p-8 (`--mode
sample`): 24.00 GiB per chip, fits; `sample --mesh fsdp=2,sequence=4` on 8 splits the batch and
the tokens (14B: 10.8 GiB per device by the plan).
The 1.3B mesh is the one the issue compiled (8 chips: 49.8 GiB). The figures above were made with
the keys and values gathered over the sequence axis (`model.sequence_parallel="gather"`: 4 b N D c
per device, N every token); `:14b_2k` attends with Ulysses (`"ulysses"`: its 40 heads split over
sequence 4, each device holding all tokens of 10 heads), which holds a quarter of that
(`training/memory.py`): compiled for v5p-16, 72.51 GiB per chip with Ulysses against 78.55
gathered (BENCHMARKS.md "2K").
"""

import ml_collections

from viewpoint_jax.data.conditions import DEFAULT_CONDITION_MIXTURE, ConditionKind
from viewpoint_jax.setup.config import base_config

# size -> (DiT preset, flow shift, remat policy)
SIZES = {
    "14b": ("wan_14b", 5.0, "full"),
    "1_3b": ("wan_1_3b", 3.0, "save_dots"),
}
ALL_CONDITIONS = "_all_conditions"  # the variant suffix: "14b_all_conditions"
LORA = "_lora"  # the variant suffix: "14b_lora"
TWO_K = "_2k"  # the variant suffix: "14b_2k"
# The paper's condition: one perspective video projected onto the map, every example (the other
# kinds listed at weight 0, so `--config.data.condition_mixture.none=0.1` can turn one on).
PAPER_CONDITION_MIXTURE = {
    kind.key: float(kind == ConditionKind.PERSPECTIVE_VIDEO) for kind in ConditionKind
}
LORA_RANK = 64  # PanoWan's
LORA_ALPHA = 64.0
ARGS = [
    *SIZES,
    *(size + ALL_CONDITIONS for size in SIZES),
    *(size + LORA for size in SIZES),
    *(size + TWO_K for size in SIZES),
]
# 2K: the map's side and ERP size (1280 -> 160 x 160 latents, 83,200 tokens for 13 latent frames).
TWO_K_MAP_SIZE, TWO_K_ERP = 1280, (1024, 2048)
# size -> (the 2K mesh, fsdp taking the rest of the devices; the global batch): what the analytic
# plan finds for the smallest topology (module docstring). 14B: the tokens split 4 ways, one sample
# per fsdp group of 4 devices, 2 on 8 devices (`--config.data.batch_size` = devices / 4 on more).
TWO_K_MESH = {
    "14b": (dict(data=1, fsdp=-1, sequence=4, tensor=1), 2),
    "1_3b": (dict(data=1, fsdp=-1, sequence=1, tensor=1), 8),
}


def get_config(arg: str | None = None):
    if arg not in ARGS:
        raise ValueError(f"configs/wan.py takes one of {ARGS}; got {arg!r}")
    if arg.endswith(TWO_K):
        return two_k_config(arg.removesuffix(TWO_K))
    config = full_config(arg.removesuffix(LORA))
    if arg.endswith(LORA):
        config.lora.rank = LORA_RANK
        config.lora.alpha = LORA_ALPHA
        config.lora.targets = ("self_q", "self_k", "self_v", "self_o")
    return config


def two_k_config(size: str):
    """The recipe of `size` at 2K: 1024 x 2048 ERP clips of 49 frames -> 1280 x 1280 maps
    (4x the tokens of 1K, 16x the Pano attention), every weight trained, remat full (the 1.3B's
    save_dots needs 115.8 GB of temporaries per chip at this size, issue 33), and the mesh the
    analytic memory plan finds for the size (`TWO_K_MESH`; the module docstring has the figures).
    The weights shard over fsdp and sequence together (`embed` -> both axes), so a sequence axis
    splits the tokens without holding more of the weights and optimizer state per device."""
    config = full_config(size)
    config.data.erp_height, config.data.erp_width = TWO_K_ERP
    config.data.map_size = TWO_K_MAP_SIZE
    config.model.remat_policy = "full"
    mesh, config.data.batch_size = TWO_K_MESH[size]
    config.mesh.update(mesh)
    if mesh["sequence"] > 1:  # Ulysses: heads (40) split over the sequence axis, not K/V gathered
        config.model.sequence_parallel = "ulysses"
    config.sharding_rules = tuple(
        (name, ("fsdp", "sequence") if name == "embed" else axes)
        for name, axes in config.sharding_rules
    )
    return config


def full_config(arg: str):
    """Every weight trained: the recipe for `arg` (a size, or a size with ALL_CONDITIONS)."""
    size = arg.removesuffix(ALL_CONDITIONS)
    preset, shift, remat_policy = SIZES[size]
    config = base_config()
    config.num_steps = 10_000  # ours: the paper's step count was not available to us

    config.model.preset = preset
    # Paper: Pano and Perspective (subregion) attention; ours: strict alternation, block by block.
    config.model.attention_pattern = "alternate"
    config.model.attention_backend = "cudnn"
    config.model.remat_policy = remat_policy
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"

    config.autoencoder.kind = "wan_vae"
    config.text_encoder.kind = "umt5"
    config.text_encoder.max_length = 512
    config.text_encoder.precompute = True

    config.data.erp_height = 512
    config.data.erp_width = 1024
    config.data.map_size = (
        640  # ours: the paper's map side was not available to us (80 x 80 latents)
    )
    config.data.num_frames = 49
    config.data.frame_stride = 1
    mixture = DEFAULT_CONDITION_MIXTURE if arg.endswith(ALL_CONDITIONS) else PAPER_CONDITION_MIXTURE
    config.data.condition_mixture = ml_collections.ConfigDict(dict(mixture))
    # The paper trains on images and videos jointly (images as 1-frame videos); the share is ours.
    config.data.image_ratio = 0.2
    config.data.caption_dropout = 0.1
    # The paper: "a batch size of 1" on 8 A100s (per device or global, unclear); ours: 1 per device.
    config.data.batch_size = 8
    config.data.worker_count = 8
    config.data.data_dir = ""
    config.data.name = "default"

    config.diffusion.timestep_sampler = "shifted_uniform"
    config.diffusion.shift = shift

    # Ours, all of them (docs/paper-recipe.md): lr, warmup, clipping, no weight decay or EMA.
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.0

    config.mesh.data = 1
    config.mesh.fsdp = -1  # FSDP over every device
    config.mesh.sequence = 1
    config.mesh.tensor = 1

    config.checkpoint.every_steps = 250
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True
    config.log.every_steps = 10
    config.log.image_every_steps = 250

    # Ours: Wan2.1's own sampling defaults (UniPC, 50 steps, its shift, guidance 5).
    config.sample.scheduler = "unipc"
    config.sample.steps = 50
    config.sample.shift = shift
    config.sample.guidance_scale = 5.0
    return config
