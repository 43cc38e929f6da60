"""ViewPoint on Wan2.1-T2V: the paper's recipe, for both model sizes.

    --config configs/wan.py:14b     Wan2.1-T2V-14B (the paper's model); also configs/wan14b.py
    --config configs/wan.py:1_3b    Wan2.1-T2V-1.3B, fits one 80 GB device; also configs/wan1_3b.py
    --config configs/wan.py:14b_lora   the same with LoRA (config.lora) instead of every weight
    --config configs/wan.py:1_3b_lora

512 x 1024 ERP clips of 49 frames -> 640 x 640 ViewPoint maps (latents 13 x 80 x 80 x 16, 20800
tokens), lr 1e-4, AdamW, batch 1 per device, bf16 compute with fp32 master weights and optimizer
state, FSDP over every device, umT5-XXL embeddings precomputed once (the 5.7B encoder never shares
memory with training). Per size: Wan's flow shift (5 for 14B, 3 for 1.3B) and the remat policy
that fits 80 GB (full for 14B, saving the matmul outputs for 1.3B).

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
Memory per device (analytic, tools/memory_plan.py): 14B LoRA on v5p-8 (8 devices, batch 1 each)
and on one 80 GB GPU with --config.data.batch_size=1 both fit with the full remat of the 14B
recipe (the frozen bf16 base alone is 27 GiB unsharded); no offload is needed.

    python -m viewpoint_jax.train --config configs/wan.py:14b_lora --workdir runs/vp14b_lora \\
        --config.model.init_checkpoint=/ckpt/wan14b_dit ...   # as above
    python -m viewpoint_jax.sample --checkpoint runs/vp14b_lora --lora_scale 1.0 ...
    python -m viewpoint_jax.convert_wan merge --src runs/vp14b_lora --dst /ckpt/vp14b_merged
"""

from viewpoint_jax.setup.config import base_config

# size -> (DiT preset, flow shift, remat policy)
SIZES = {
    "14b": ("wan_14b", 5.0, "full"),
    "1_3b": ("wan_1_3b", 3.0, "save_dots"),
}
LORA_RANK = 64  # PanoWan's
LORA_ALPHA = 64.0
ARGS = (*SIZES, *(f"{size}_lora" for size in SIZES))


def get_config(arg: str | None = None):
    if arg not in ARGS:
        raise ValueError(f"configs/wan.py takes a model size, one of {list(ARGS)}; got {arg!r}")
    config = full_config(arg.removesuffix("_lora"))
    if arg.endswith("_lora"):
        config.lora.rank = LORA_RANK
        config.lora.alpha = LORA_ALPHA
        config.lora.targets = ("self_q", "self_k", "self_v", "self_o")
    return config


def full_config(size: str):
    """Every weight trained: the paper's recipe for `size`."""
    preset, shift, remat_policy = SIZES[size]
    config = base_config()
    config.num_steps = 10_000

    config.model.preset = preset
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
    config.data.map_size = 640
    config.data.num_frames = 49
    config.data.frame_stride = 1
    # The paper trains on images and videos jointly (images as 1-frame videos); the share is ours.
    config.data.image_ratio = 0.2
    config.data.caption_dropout = 0.1
    config.data.batch_size = 8  # 1 per device on 8 devices
    config.data.worker_count = 8
    config.data.data_dir = ""
    config.data.name = "default"

    config.diffusion.timestep_sampler = "shifted_uniform"
    config.diffusion.shift = shift

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

    config.sample.scheduler = "unipc"
    config.sample.steps = 50
    config.sample.shift = shift
    config.sample.guidance_scale = 5.0
    return config
