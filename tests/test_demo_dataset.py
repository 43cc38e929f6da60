"""The embedded demo dataset: deterministic moving scenes whose captions describe them."""

import json

import numpy as np
import pytest

from viewpoint_jax.data import config as data_config_lib
from viewpoint_jax.data import demo_dataset as demo
from viewpoint_jax.data import panoramic_videos, pipeline

HEIGHT, FRAMES, FPS = 32, 9, 4.0


def test_scenes_are_deterministic_and_varied():
    scenes = [demo.scene_for(0, i) for i in range(60)]
    assert scenes == [demo.scene_for(0, i) for i in range(60)]
    assert scenes != [demo.scene_for(1, i) for i in range(60)]
    assert {s.background for s in scenes} == set(demo.BACKGROUNDS)
    assert {s.light for s in scenes} == set(demo.LIGHTS)
    assert {s.camera for s in scenes} == set(demo.CAMERAS)
    assert {b.motion for s in scenes for b in s.balls} == set(demo.MOTIONS)
    assert {len(s.balls) for s in scenes} == {1, 2, 3}
    assert all(len({b.colour for b in s.balls}) == len(s.balls) for s in scenes)


def test_caption_is_written_from_the_parameters():
    scene = demo.DemoScene(
        background="room",
        light="dimming",
        camera="left",
        balls=(
            demo.Ball("green", "large", "right", 0.0, 0.0),
            demo.Ball("cyan", "small", "up", 120.0, 10.0),
        ),
    )
    assert scene.caption == (
        "A tiled room with red, blue and yellow discs on the walls, as the light dims. "
        "A large green ball moves to the right and a small cyan ball rises. "
        "The camera slowly turns left."
    )
    for i in range(30):
        scene = demo.scene_for(3, i)
        caption = scene.caption
        assert demo.BACKGROUNDS[scene.background] in caption
        assert demo.LIGHTS[scene.light] in caption
        assert caption.count(" ball ") == len(scene.balls)
        for ball in scene.balls:
            assert (
                f"{ball.size} {ball.colour} ball {demo.MOTIONS[ball.motion][1]}" in caption.lower()
            )
        assert ("stays still" in caption) == (scene.camera == "still")


def _ball_centre_visible(scene, ball, t):
    """False where another ball, drawn later, may cover this ball's centre."""
    lon, lat = demo.ball_lonlat_deg(ball, t)
    later = scene.balls[scene.balls.index(ball) + 1 :]
    for other in later:
        olon, olat = demo.ball_lonlat_deg(other, t)
        a, b = np.deg2rad([lon, lat]), np.deg2rad([olon, olat])
        cos = np.sin(a[1]) * np.sin(b[1]) + np.cos(a[1]) * np.cos(b[1]) * np.cos(a[0] - b[0])
        if np.rad2deg(np.arccos(np.clip(cos, -1, 1))) < demo.SIZES[other.size] + 3:
            return False
    return True


def test_rendered_clips_show_what_the_caption_says():
    checked = 0
    for i in range(6):
        scene = demo.scene_for(0, i)
        clip = demo.render_scene(scene, HEIGHT, FRAMES, FPS)
        assert clip.shape == (FRAMES, HEIGHT, 2 * HEIGHT, 3) and clip.dtype == np.uint8
        for frame in (0, FRAMES - 1):
            for ball in scene.balls:
                if not _ball_centre_visible(scene, ball, frame / FPS):
                    continue
                row, col = demo.ball_pixel(ball, scene, frame / FPS, HEIGHT)
                want = np.asarray(demo.COLOURS[ball.colour]) * 255
                np.testing.assert_allclose(clip[frame, row, col], want, atol=20)
                checked += 1
    assert checked > 15


def test_motion_camera_and_light_are_in_the_pixels():
    # A ball rising while the camera turns right: it stays at one world longitude, so it drifts
    # left in the view; the light dims, so the background darkens.
    ball = demo.Ball("magenta", "large", "up", 30.0, -20.0)
    scene = demo.DemoScene("smooth", "dimming", "right", (ball,))
    clip = demo.render_scene(scene, HEIGHT, FRAMES, FPS).astype(np.float32)
    (r0, c0), (r1, c1) = (demo.ball_pixel(ball, scene, f / FPS, HEIGHT) for f in (0, FRAMES - 1))
    assert r1 < r0 and c1 < c0
    magenta = np.asarray(demo.COLOURS["magenta"]) * 255
    for frame, (row, col) in ((0, (r0, c0)), (FRAMES - 1, (r1, c1))):
        np.testing.assert_allclose(clip[frame, row, col], magenta, atol=20)
    assert np.abs(clip[FRAMES - 1, r0, c0] - magenta).max() > 60  # it has moved away
    background = np.abs(clip - magenta).max(-1) > 60
    first, last = clip[0][background[0]].mean(), clip[-1][background[-1]].mean()
    dim = demo.light_level("dimming", np.float32((FRAMES - 1) / FPS), FRAMES / FPS)
    assert last / first == pytest.approx(dim, rel=0.1)


def test_demo_dataset_builds_deterministically_and_feeds_the_pipeline(tmp_path):
    sizes = dict(num_train=3, num_test=1, num_images=1, height=HEIGHT, num_frames=FRAMES, seed=5)
    out = {}
    for run in ("a", "b"):
        data_dir, name = demo.build_demo_dataset(tmp_path / run, "demo", **sizes)
        assert name == "demo" and data_dir == tmp_path / run / "data"
        records = sorted(
            panoramic_videos.open_data_source(data_dir, name, "train"), key=lambda r: r["source"]
        )
        out[run] = records
    a, b = out["a"], out["b"]
    assert [r["source"] for r in a] == [
        b"image_000.png",
        b"train_000.mp4",
        b"train_001.mp4",
        b"train_002.mp4",
    ]
    for x, y in zip(a, b):
        assert x["caption"] == y["caption"] and x["frames"] == y["frames"]
    lines = [json.loads(x) for x in (tmp_path / "a/source/captions.jsonl").read_text().splitlines()]
    assert [x["split"] for x in lines] == ["train"] * 3 + ["test", "train"]
    assert lines[0]["caption"] == demo.scene_for(5, 0).caption
    counts = panoramic_videos.split_counts(tmp_path / "a/data", "demo")
    assert counts["train"]["videos"] == 3 and counts["train"]["images"] == 1
    assert counts["test"]["videos"] == 1
    assert a[1]["num_frames"] == FRAMES and (a[1]["height"], a[1]["width"]) == (HEIGHT, 2 * HEIGHT)

    config = data_config_lib.data_config()
    config.update(
        dict(data_dir=str(tmp_path / "a/data"), name="demo", erp_height=16, erp_width=32,
             map_size=16, num_frames=5, batch_size=2, image_ratio=0.5)
    )  # fmt: skip
    batches = [next(pipeline.make_train_iterator(config)) for _ in range(1)]
    assert batches[0]["target_map"].shape[2:] == (16, 16, 3)
    (held_out,) = list(pipeline.make_eval_iterator(config))
    assert held_out["caption"][0] == demo.scene_for(5, 3).caption
    assert held_out["target_map"].shape == (1, 5, 16, 16, 3)
