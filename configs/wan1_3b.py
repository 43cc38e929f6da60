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

from viewpoint_jax.config_validation import wan_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/wan1_3b.py takes no argument, got {arg!r}")
    return wan_config("wan_1_3b", shift=3.0, remat_policy="save_dots")
