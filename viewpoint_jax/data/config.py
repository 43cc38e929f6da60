"""`config.data`: the data section of the run config, owned by the input pipeline: its defaults
(`data_config`), its validation (`validate_data_config`, a bad value fails at start naming its
key) and what is read from it (`data_source`, `data_representation`, `canvas_hw`).
"""

import enum

import ml_collections
import numpy as np

from viewpoint_jax.data.conditions import DEFAULT_CONDITION_MIXTURE, parse_mixture, sample_view
from viewpoint_jax.geometry import Representation, canvas_size


def fail(key: str, message: str):
    """Raises the ValueError every config check raises: it names the key (`config.<key>`)."""
    raise ValueError(f"config.{key}: {message}")


def positive_int(config: ml_collections.ConfigDict, key: str, prefix: str = "") -> int:
    """`config[key]` (dotted), which must be an int >= 1 (not a bool); `fail` otherwise."""
    value = config
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(prefix + key, f"must be a positive integer, got {value!r}")
    return value


class DataSource(enum.StrEnum):
    """What a run trains on (`config.data.source`), which decides the DiT's input.

    PANORAMAS: the prepared dataset (`data_dir`, `name`) as ViewPoint maps with their conditions;
    the DiT takes concat[noisy latent, condition latent, mask] (2 C + 1 channels).
    DEMO_SCENES: perspective clips of procedural demo scenes rendered on the fly
    (data/perspective_clips.py, `config.data.scenes`) with their captions, no condition: a plain
    text-to-video DiT (C input channels), pretrained as Wan was on perspective video
    (configs/tiny.py:pretrain).
    """

    PANORAMAS = "panoramas"
    DEMO_SCENES = "demo_scenes"


def data_source(data: ml_collections.ConfigDict) -> DataSource:
    """`config.data.source` (a run saved before the key existed: the panoramas)."""
    return DataSource(data.get("source", DataSource.PANORAMAS))


def data_config() -> ml_collections.ConfigDict:
    """`config.data`: the demo dataset at CPU size; configs override what they need."""
    c = ml_collections.ConfigDict()
    c.source = DataSource.PANORAMAS.value
    c.data_dir = "demo_output/data"  # the TFDS data dir (holds panoramic_videos/<name>/<version>)
    c.name = "demo"  # dataset name given to `python -m viewpoint_jax.prepare_dataset --name`
    c.train_split = "train"
    c.eval_split = "test"
    c.erp_height = 64
    c.erp_width = 128
    c.map_size = 64
    # The frames the DiT sees (geometry/canvas.py): "viewpoint" (the M x M map), "erp" or
    # "cube_2x3" (each about M x M pixels, `canvas_hw`); subregion attention needs "viewpoint".
    c.representation = Representation.VIEWPOINT.value
    c.num_frames = 9  # frames per video clip (1 + 4k for the Wan VAE)
    c.frame_stride = 1  # take every stride-th frame
    c.image_ratio = 0.0  # fraction of batches that are images (1-frame videos)
    c.caption_dropout = 0.1  # caption -> "" at this rate (classifier-free guidance)
    c.condition_fov_range = (60.0, 120.0)  # horizontal field of view, degrees
    c.condition_yaw_range = (-180.0, 180.0)
    c.condition_pitch_range = (-30.0, 30.0)
    c.condition_roll_range = (0.0, 0.0)
    c.condition_size = (0, 0)  # perspective (h, w); (0, 0): conditions.condition_size(erp_height)
    c.yaw_augment = True  # random horizontal roll of the ERP
    # Condition kind -> weight (data/conditions.py ConditionKind); kinds left out weigh 0. Assign
    # a whole dict to replace it (config.update merges). The tiny configs train this project's
    # mixture; configs/wan.py the paper's condition alone (docs/paper-recipe.md).
    c.condition_mixture = ml_collections.ConfigDict(dict(DEFAULT_CONDITION_MIXTURE))
    c.batch_size = 8  # global, over all hosts
    c.worker_count = 0  # grain worker processes per host (0: in the main process)
    c.worker_buffer_size = 1  # batches buffered per worker
    c.read_threads = 2  # threads per process reading and processing records
    c.shuffle_seed = 0
    # Unreadable records (corrupt bytes, undecodable frames) are skipped and counted; past this
    # fraction of the records read (checked from 20 on) the dataset is broken, not unlucky:
    # training stops with a message instead of learning from what is left.
    c.max_bad_fraction = 0.05
    # "" encodes the maps in the train step; a name reads panoramic_latents/<name> from data_dir,
    # written by `python -m viewpoint_jax.precompute_latents` (data/latents.py: fixed draws per record).
    c.precomputed_latents = ""
    # Source "demo_scenes" only: `count` scenes (`demo_dataset.scene_for(seed, i)`; the demo
    # dataset's are seed 0), each a clip of `clip_frames` frames at `fps`; an example is
    # `num_frames` of them seen by a random camera of `size` (h, w) pixels, fov and pitch in
    # the ranges (yaw any), rendered from an ERP of `erp_height`.
    c.scenes = ml_collections.ConfigDict(
        dict(
            count=2048,
            seed=1,
            clip_frames=17,
            fps=8.0,
            size=(32, 32),
            fov_range=(60.0, 120.0),
            pitch_range=(-60.0, 60.0),
        )
    )
    return c


def data_representation(data: ml_collections.ConfigDict) -> Representation:
    """`config.data.representation` (a run saved before the key existed: the ViewPoint map)."""
    return Representation(data.get("representation", Representation.VIEWPOINT))


def canvas_hw(data: ml_collections.ConfigDict) -> tuple[int, int]:
    """(H, W) of the frames the DiT sees: the map's (M, M), or the ERP / cube raster of about
    as many pixels (`geometry.canvas_size`)."""
    return canvas_size(data_representation(data), data.map_size)


def validate_data_config(data: ml_collections.ConfigDict) -> None:
    """Checks `config.data` alone (what the input pipeline needs); ValueError names the key."""
    for key in ("erp_height", "erp_width", "map_size", "num_frames", "frame_stride", "batch_size"):
        positive_int(data, key, prefix="data.")
    if data.erp_width != 2 * data.erp_height:
        fail("data.erp_width", f"must be 2 * erp_height, got {data.erp_height}x{data.erp_width}")
    if data.map_size % 2:
        fail("data.map_size", f"must be even, got {data.map_size}")
    if data.get("representation", Representation.VIEWPOINT) not in set(Representation):
        fail(
            "data.representation",
            f"must be one of {[r.value for r in Representation]}, got {data.representation!r}",
        )
    for key in ("image_ratio", "caption_dropout", "max_bad_fraction"):
        if not 0.0 <= data[key] <= 1.0:
            fail(f"data.{key}", f"must be in [0, 1], got {data[key]}")
    if data.worker_count < 0:
        fail("data.worker_count", f"must be >= 0, got {data.worker_count}")
    parse_mixture(data.condition_mixture)  # its ValueError names config.data.condition_mixture.<k>
    if data.get("source", DataSource.PANORAMAS) not in tuple(DataSource):
        fail("data.source", f"must be one of {[s.value for s in DataSource]}, got {data.source!r}")
    if data_source(data) == DataSource.DEMO_SCENES:
        _validate_scenes(data)


def _validate_scenes(data: ml_collections.ConfigDict) -> None:
    scenes = data.scenes
    for key in ("count", "clip_frames"):
        positive_int(scenes, key, prefix="data.scenes.")
    if data.num_frames > scenes.clip_frames:
        fail("data.scenes.clip_frames", f"must be >= num_frames {data.num_frames}")
    if not scenes.fps > 0:
        fail("data.scenes.fps", f"must be > 0, got {scenes.fps}")
    size = tuple(scenes.size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        fail("data.scenes.size", f"must be (h, w) positive integers, got {scenes.size}")
    if data.precomputed_latents:
        fail("data.precomputed_latents", "the demo_scenes source renders its clips: use ''")
    try:  # the ranges are checked as the views are drawn
        sample_view(np.random.default_rng(0), scenes.fov_range, pitch_range=scenes.pitch_range)
    except ValueError as error:
        fail("data.scenes", str(error))
