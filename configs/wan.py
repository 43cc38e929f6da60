"""ViewPoint on Wan2.1-T2V: the paper's recipe, for both model sizes.

    --config configs/wan.py:14b     Wan2.1-T2V-14B (the paper's model); also configs/wan14b.py
    --config configs/wan.py:1_3b    Wan2.1-T2V-1.3B, fits one 80 GB device; also configs/wan1_3b.py

512 x 1024 ERP clips of 49 frames -> 640 x 640 ViewPoint maps (latents 13 x 80 x 80 x 16, 20800
tokens), lr 1e-4, AdamW, batch 1 per device, bf16 compute with fp32 master weights and optimizer
state, FSDP over every device, umT5-XXL embeddings precomputed once (the 5.7B encoder never shares
memory with training). Per size: Wan's flow shift (5 for 14B, 3 for 1.3B) and the remat policy
that fits 80 GB (full for 14B, saving the matmul outputs for 1.3B).

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
"""

from viewpoint_jax.setup.config import base_config

# size -> (DiT preset, flow shift, remat policy)
SIZES = {
    "14b": ("wan_14b", 5.0, "full"),
    "1_3b": ("wan_1_3b", 3.0, "save_dots"),
}


def get_config(arg: str | None = None):
    if arg not in SIZES:
        raise ValueError(f"configs/wan.py takes a model size, one of {list(SIZES)}; got {arg!r}")
    preset, shift, remat_policy = SIZES[arg]
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
