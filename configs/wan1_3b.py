"""ViewPoint on Wan2.1-T2V-1.3B: the smaller model, same data and recipe.

As configs/wan14b.py (512 x 1024 ERP, 49 frames, 640 map, lr 1e-4, AdamW, bf16 compute with fp32
master weights, FSDP) with the 1.3B DiT, which fits one 80 GB device; Wan's 1.3B flow shift is 3.

    python -m viewpoint_jax.train --config configs/wan1_3b.py --workdir runs/vp1_3b \\
        --config.model.init_checkpoint=/ckpt/wan1_3b_dit \\
        --config.autoencoder.checkpoint=/ckpt/wan_vae \\
        --config.text_encoder.checkpoint=/ckpt/umt5_xxl \\
        --config.text_encoder.tokenizer=/ckpt/umt5_xxl/spiece.model \\
        --config.data.data_dir=/data/tfds --config.data.name=my_panoramas
"""

from viewpoint_jax.config_validation import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.num_steps = 10_000

    config.model.preset = "wan_1_3b"
    config.model.attention_pattern = "alternate"
    config.model.attention_backend = "cudnn"
    config.model.remat_policy = "save_dots"
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
    config.data.image_ratio = 0.0
    config.data.caption_dropout = 0.1
    config.data.batch_size = 8  # 1 per device on 8 devices
    config.data.worker_count = 8
    config.data.data_dir = ""
    config.data.name = "default"

    config.diffusion.timestep_sampler = "shifted_uniform"
    config.diffusion.shift = 3.0

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
    config.sample.shift = 5.0
    config.sample.guidance_scale = 5.0
    if arg:
        raise ValueError(f"configs/wan1_3b.py takes no argument, got {arg!r}")
    return config
