"""viewpoint_jax: ViewPoint panoramic video generation with pretrained Wan2.1 diffusion models.

The library, one folder per stage, lowest floor first (docs/architecture.md); a module imports
only from its own floor or below:
  common/      cli, atomic file writes, progress, sharding (mesh, logical axes), distributed, video io
  geometry/    pure jnp projections (ERP, cube map, perspective, ViewPoint map), the canvas
  models/      Wan DiT (Pano and subregion attention), Wan VAE, umT5, converted-weight restore
  diffusion/   flow matching, schedulers, the one compiled denoising loop
  data/        the panoramic_videos dataset, its preparation, the grain pipeline, conditions
  setup/       the run config (schema, validation, files) and the parts it names
  training/    the train step, the loop, optimizer, run checkpoints, telemetry, memory plan
  generation/  loading, conditioning, decoding, long videos, outputs, prompt files, viewer
  evaluation/  panorama metrics, outpainting error, the evaluate report
  studies/     the demo and the ablations
  convert/     PyTorch Wan checkpoints -> Orbax (offline; only its command imports it)
The commands stand at the top, `python -m viewpoint_jax.<command>`: train, sample, evaluate,
demo, convert_wan, prepare_dataset, inspect_dataset, precompute_latents, precompute_text,
make_demo_dataset, pretrain, ablation, condition_ablation.
"""

import flax

# Parameters carry logical-axis annotations as metadata only; `viewpoint_jax.common.sharding` turns them
# into NamedShardings explicitly (jit out_shardings), so modules can be built without a mesh.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
