"""viewpoint_jax: ViewPoint panoramic video generation with pretrained Wan2.1 diffusion models.

Package layout:
  geometry/   pure jnp panoramic projections (ERP, cube map, perspective, ViewPoint map)
  models/     Wan DiT with Pano and subregion attention, Wan VAE, umT5 text encoder
  convert/    PyTorch Wan checkpoints -> Orbax
  data/       TFDS builder, grain pipeline, conditions, procedural scenes
  diffusion/  flow matching, schedulers, the compiled sampler
  sharding    device mesh and logical-axis rules
  train       `python -m viewpoint_jax.train --config configs/wan14b.py`
  sample      `python -m viewpoint_jax.sample ...` (360 video generation CLI)
"""

import flax

# Parameters carry logical-axis annotations as metadata only; `viewpoint_jax.common.sharding` turns them
# into NamedShardings explicitly (jit out_shardings), so modules can be built without a mesh.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
