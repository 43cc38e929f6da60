"""CPU-sized ViewPoint: trains on the demo dataset in minutes on a laptop.

A space-to-depth pixel transform stands in for the Wan VAE (4 x 4 pixel blocks -> 48 latent
channels) and a small randomly initialised umT5 with a byte tokenizer stands in for umT5-XXL.
The DiT is a 4-block Wan (pano, subregion, pano, subregion attention).

    python -m viewpoint_jax.train --config configs/tiny.py --workdir runs/tiny
    python -m viewpoint_jax.train --config configs/tiny.py:micro ...   # test size
"""

from viewpoint_jax.config import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.seed = 0
    config.num_steps = 500

    config.model.preset = "tiny"
    # Each token carries 4x4 (space-to-depth) x 2x2 (patch) x 3 = 192 pixel values: a narrower
    # model cannot denoise them (dim 64 learned no better than a grey fill in the demo).
    config.model.dim = 192
    config.model.ffn_dim = 384
    config.model.num_heads = 2
    config.model.num_layers = 4
    config.model.freq_dim = 32
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"

    config.autoencoder.kind = "space_to_depth"
    config.autoencoder.factor = 4

    config.text_encoder.kind = "tiny_random"
    config.text_encoder.max_length = 64

    config.data.erp_height = 64
    config.data.erp_width = 128
    config.data.map_size = 64
    config.data.num_frames = 5
    config.data.batch_size = 4
    config.data.image_ratio = 0.0

    config.diffusion.timestep_sampler = "logit_normal"

    config.optim.lr = 2e-3
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 0.0
    config.optim.ema_decay = 0.0

    config.mesh.fsdp = -1
    config.checkpoint.every_steps = 100
    config.checkpoint.keep = 2
    config.log.every_steps = 10
    config.log.image_every_steps = 100

    config.sample.scheduler = "euler"
    config.sample.steps = 20
    config.sample.shift = 3.0
    config.sample.guidance_scale = 3.0

    if arg == "micro":  # the test size: seconds per dozen steps on one CPU core
        config.num_steps = 8
        config.model.dim = 32
        config.model.ffn_dim = 64
        config.model.num_layers = 2
        config.model.freq_dim = 32
        config.autoencoder.factor = 8
        config.text_encoder.max_length = 16
        config.data.erp_height = 32
        config.data.erp_width = 64
        config.data.map_size = 64
        config.data.num_frames = 5
        config.data.batch_size = 4
        config.data.caption_dropout = 0.1
        config.optim.warmup_steps = 2
        config.checkpoint.every_steps = 4
        config.log.every_steps = 1
        config.log.image_every_steps = 0
    elif arg:
        raise ValueError(f"configs/tiny.py: unknown argument {arg!r} (use 'micro' or nothing)")
    return config
