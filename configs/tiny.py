"""CPU-sized ViewPoint: trains on the demo dataset in minutes on a laptop.

A fixed block DCT stands in for the Wan VAE (4 x 4 pixel blocks -> their 16 lowest frequencies
in opponent colours: Wan's 16 latent channels) and a small randomly initialised umT5 with a byte
tokenizer stands in for umT5-XXL.
The DiT is a 4-block Wan (pano, subregion, pano, subregion attention). As ViewPoint starts from
Wan2.1, it starts from a DiT pretrained on perspective video: the committed checkpoint
viewpoint_jax/assets/tiny_perspective (made by `:pretrain`; its README.md has the command).

    python -m viewpoint_jax.train --config configs/tiny.py --workdir runs/tiny
    python -m viewpoint_jax.train --config configs/tiny.py:micro ...   # test size
    python -m viewpoint_jax.pretrain --config configs/tiny.py:pretrain ... # the pretrained DiT

Arguments: "micro" (the test size, from scratch), "pretrain" (a plain text-to-video Wan of the
same size on perspective clips of demo scenes), "micro_pretrain" (both), "lora" (the fine-tuning
with LoRA adapters instead of every weight: rank 16, alpha 16, on the self-attention's q, k, v, o
and the FFN; the patch embedding trains in full; BENCHMARKS.md, "LoRA"), "2k" (the 2K map of
configs/wan.py:14b_2k at test size: 1024 x 2048 ERP, 1280 map, 5 frames, the tokens split over a
sequence axis of every device, e.g. 4 with XLA_FLAGS=--xla_force_host_platform_device_count=4).
"""

from pathlib import Path

import viewpoint_jax
from viewpoint_jax.data.config import DataSource
from viewpoint_jax.setup.config import base_config

PRETRAINED = Path(viewpoint_jax.__file__).parent / "assets" / "tiny_perspective"
ARGS = (None, "micro", "pretrain", "micro_pretrain", "lora", "2k")


def get_config(arg: str | None = None):
    if arg not in ARGS:
        raise ValueError(
            f"configs/tiny.py: unknown argument {arg!r} (use one of {ARGS[1:]} or none)"
        )
    config = base_config()
    config.seed = 0
    # Twice in the demo (fine-tuned and from scratch), within its 15 minutes: half the steps are
    # single frames (image_ratio below), a third the cost of a 5-frame step.
    config.num_steps = 600

    config.model.preset = "tiny"
    # A token covers 8 x 8 pixels (2 x 2 patches of 4 x 4 blocks). With the space-to-depth stand-in
    # (192 values a token) dim 64 learned no better than a grey fill in the demo.
    config.model.dim = 192
    config.model.ffn_dim = 384
    config.model.num_heads = 2
    config.model.num_layers = 4
    config.model.freq_dim = 32
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"
    # The head predicts the clean latent (returned as its velocity, dit.Prediction): with as many
    # values per token as its width, a velocity head passes the noise through badly and samples
    # stay noisy blocks (measured with space-to-depth).
    config.model.prediction = "clean"
    config.model.init_checkpoint = str(PRETRAINED)

    # A fixed 4x4 block DCT in opponent colours keeps the 16 lowest frequencies (Wan's 16 latent
    # channels): 64 values a token instead of space-to-depth's 192, and the smooth part of a map
    # first (+1.1 dB outside the condition, BENCHMARKS.md, "What the bar asks").
    config.autoencoder.kind = "block_dct"
    config.autoencoder.factor = 4
    config.autoencoder.channels = 16

    config.text_encoder.kind = "tiny_random"
    config.text_encoder.max_length = 256  # bytes: the longest demo caption is 246

    config.data.erp_height = 64
    config.data.erp_width = 128
    config.data.map_size = 64
    config.data.num_frames = 5
    config.data.batch_size = 4
    # Joint image and video training, as the paper's recipe (the shares are ours; configs/wan.py:
    # 0.2): half the batches are single frames, a still or one frame of a clip. In the time of 400 video steps
    # the demo's fine-tuned model gains 0.88 dB (BENCHMARKS.md, "Joint image and video").
    config.data.image_ratio = 0.5
    # The condition camera faces the scene's front and the panorama is not turned: the demo
    # scenes are fixed rooms and fields, so what lies around the view follows from the view, and
    # the model can learn the structure that continues it. Random turns (the base config's, for
    # real footage, which has no front) leave a DiT without absolute positions only the view's
    # content to place the rest by: at this size it stays a colour field.
    config.data.yaw_augment = False
    config.data.condition_yaw_range = (0.0, 0.0)

    config.diffusion.timestep_sampler = "logit_normal"
    # The loss on the clean latent (flow_matching.Loss) weighs the noisiest steps, where the
    # layout outside the condition is decided, as much as the rest; the shift trains more of them.
    config.diffusion.loss = "clean"
    config.diffusion.shift = 3.0

    config.optim.lr = 2e-3
    config.optim.warmup_steps = 20
    # Annealed to zero: the demo compares two runs by their last weights, which at a constant
    # 2e-3 still jump from checkpoint to checkpoint (BENCHMARKS.md, "The demo's pretrained start").
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 0.0
    config.optim.ema_decay = 0.0

    config.mesh.fsdp = -1
    config.checkpoint.every_steps = 100
    config.checkpoint.keep = 2
    config.log.every_steps = 10
    config.log.image_every_steps = 100

    # Few steps, no guidance: at this size and budget a sample's error compounds over the steps;
    # with 20 steps and guidance 3 neither the fine-tuned nor the scratch model beats a grey fill
    # by more than 0.02 dB on the demo's held-out clips (BENCHMARKS.md, "The demo's pretrained
    # start").
    config.sample.scheduler = "euler"
    config.sample.steps = 4
    config.sample.shift = 3.0
    config.sample.guidance_scale = 1.0
    # The view's latent cells are held at its latent while the model paints around them: the
    # condition comes back in the picture (otherwise the model repaints it, blurred) and the
    # fine-tuned model's error outside it drops a little (BENCHMARKS.md, "Keeping the view").
    config.sample.keep_known = True

    if arg in ("micro", "micro_pretrain"):  # the test size: seconds per dozen steps on one core
        config.num_steps = 8
        config.model.dim = 32
        config.model.ffn_dim = 64
        config.model.num_layers = 2
        config.model.freq_dim = 32
        config.model.init_checkpoint = ""  # no committed checkpoint of this size
        # Wan's velocity head: a clean prediction's velocity loss weighs each step by 1 / s^2,
        # too noisy for the tests' few-step comparisons of losses.
        config.model.prediction = "velocity"
        config.optim.schedule = "constant"  # tests stop and resume runs of different lengths
        # The tests' latents: space-to-depth 8x8 (192 channels) and Wan's velocity loss.
        config.autoencoder.kind = "space_to_depth"
        config.autoencoder.factor = 8
        config.diffusion.loss = "velocity"
        config.diffusion.shift = 1.0
        # Random turns and views (the base config's, as real footage needs): the tests cover that path.
        defaults = base_config().data
        config.data.yaw_augment = defaults.yaw_augment
        config.data.condition_yaw_range = defaults.condition_yaw_range
        config.data.image_ratio = defaults.image_ratio  # the tests' data has no stills
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
    if arg in ("pretrain", "micro_pretrain"):
        pretrain(config, micro=arg == "micro_pretrain")
    if arg == "2k":
        two_k(config)
    if arg == "lora":  # rank 16 of width 192 (configs/wan.py: 64 of 1536 or 5120)
        config.lora.rank = 16
        config.lora.alpha = 16.0
        config.lora.targets = ("self_q", "self_k", "self_v", "self_o", "ffn")
    return config


def pretrain(config, micro: bool) -> None:
    """Wan's pretraining in miniature: the same DiT without the condition channels and with
    pano attention only (plain Wan), text-to-video on perspective clips of demo scenes."""
    config.data.source = DataSource.DEMO_SCENES.value
    config.model.attention_pattern = "pano"
    config.model.init_checkpoint = ""
    config.data.image_ratio = 0.0  # the committed checkpoint's run: clips only
    config.data.scenes.size = (32, 32)  # a subregion's size: 90 degrees at the map's resolution
    config.log.image_every_steps = 0
    if micro:
        config.num_steps = 4
        config.data.scenes.count = 16
        return
    config.num_steps = 4000  # about an hour on 2 CPU cores (60.5 min of steps)
    config.data.batch_size = 16
    config.diffusion.timestep_sampler = "logit_normal"
    config.diffusion.shift = 1.0  # 80 tokens a clip: no shift towards noise
    config.optim.lr = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50
    config.checkpoint.every_steps = 250


def two_k(config) -> None:
    """configs/wan.py:14b_2k's sizes and mesh at test size: the 2K map (1280, ERP 1024 x 2048)
    of 5 frames through a two-block DiT (one Pano, one subregion block; width 32, one head), one
    sample a step, its tokens split over a sequence axis of every device and the weights over
    fsdp and sequence (as the 2K Wan configs). A 16 x 16 block DCT keeps Wan's 16 latent
    channels (the DiT's 33 input channels) at 1 / 16 of the side: 80 x 80 latents, 40 x 40
    tokens a frame, 8,000 tokens a clip (Wan's VAE, 1 / 8 and 4 frames a latent frame, would
    give 12,800: the stand-ins compress no time)."""
    config.num_steps = 2
    config.model.dim = 32
    config.model.ffn_dim = 64
    # One head: the CPU's XLA attention holds fp32 scores of 8,000 x 8,000 tokens per head (two
    # heads: 14 s a step and 8.6 GB resident on 4 simulated devices; one: 9 s, 6.5 GB).
    config.model.num_heads = 1
    config.model.num_layers = 2
    config.model.init_checkpoint = ""  # no committed checkpoint of this size
    config.model.prediction = "velocity"
    config.model.remat_policy = "full"  # as the 2K Wan configs
    config.autoencoder.factor = 16
    config.diffusion.loss = "velocity"
    config.text_encoder.max_length = 16
    config.data.erp_height, config.data.erp_width = 1024, 2048
    config.data.map_size = 1280
    config.data.num_frames = 5
    config.data.batch_size = 1
    config.data.image_ratio = 0.0  # video steps only: one program to compile
    config.mesh.update(dict(data=1, fsdp=1, sequence=-1, tensor=1))
    config.sharding_rules = tuple(
        (name, ("fsdp", "sequence") if name == "embed" else axes)
        for name, axes in config.sharding_rules
    )
    config.optim.warmup_steps = 1
    config.optim.schedule = "constant"
    config.checkpoint.every_steps = 2
    config.log.every_steps = 1
    config.log.image_every_steps = 0
    config.sample.steps = 2
