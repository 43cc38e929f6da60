"""ViewPoint on Wan2.1-T2V-14B: the paper's setup.

512 x 1024 ERP clips of 49 frames -> 640 x 640 ViewPoint maps (latents 13 x 80 x 80 x 16, 20800
tokens), lr 1e-4, AdamW, batch 1 per device on 8 x 80 GB (A100/H100), bf16 compute with fp32
master weights and optimizer state, FSDP over all devices, full rematerialisation, umT5-XXL
embeddings precomputed once (the 5.7B encoder never shares memory with training).

    python -m viewpoint_jax.train --config configs/wan14b.py --workdir runs/vp14b \\
        --config.model.init_checkpoint=/ckpt/wan14b_dit \\
        --config.autoencoder.checkpoint=/ckpt/wan_vae \\
        --config.text_encoder.checkpoint=/ckpt/umt5_xxl \\
        --config.text_encoder.tokenizer=/ckpt/umt5_xxl/spiece.model \\
        --config.data.data_dir=/data/tfds --config.data.name=my_panoramas
"""

from viewpoint_jax.config_validation import wan_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/wan14b.py takes no argument, got {arg!r}")
    return wan_config("wan_14b", shift=5.0, remat_policy="full")
