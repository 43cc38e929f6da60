"""The self-contained 360 viewer page, loaded in headless Chromium."""

import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from viewpoint_jax.common import video_io
from viewpoint_jax.generation import viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# ERP colour per quarter of longitude, centred on the front (F), right (R), back (B), left (L).
QUARTER_COLOURS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220], [220, 220, 30]], np.uint8)


def quartered_panorama(frames=5, height=64, width=128):
    j = np.arange(width)
    lon = 2 * np.pi * ((j + 0.5) / width - 0.5)
    quarter = np.floor((lon + np.pi / 4) / (np.pi / 2)).astype(int) % 4
    erp = np.broadcast_to(QUARTER_COLOURS[quarter][None], (height, width, 3))
    return np.repeat(erp[None], frames, axis=0).copy()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    directory = tmp_path_factory.mktemp("viewer")
    panorama = quartered_panorama()
    video_io.write_video(directory / "pano.mp4", panorama, fps=8, spherical=True)
    path = directory / "viewer.html"
    viewer.write_viewer(path, (directory / "pano.mp4").read_bytes(), panorama[0], "test <pano>")
    return path


def screenshot(page, fragment, tmp_path, size=(320, 240)):
    png = tmp_path / "shot.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=3000",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={png}",
        page.as_uri() + fragment,
    ]
    subprocess.run(command, capture_output=True, timeout=90, check=True)
    return cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)


def test_page_is_self_contained(page):
    text = page.read_text()
    assert "<script src" not in text and "<link" not in text
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert 'src="data:video/mp4;base64,' in text and 'src="data:image/jpeg;base64,' in text
    assert "test &lt;pano&gt;" in text  # the title is escaped


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
@pytest.mark.parametrize("fragment,quarter", [("", 0), ("#yaw=90", 1), ("#yaw=180&fov=60", 2)])
def test_headless_chromium_renders_the_view(page, fragment, quarter, tmp_path):
    """The rendered view is the panorama seen from the requested direction: a 60-90 degree view
    centred on one longitude quarter shows (almost) only that quarter's colour."""
    shot = screenshot(page, fragment, tmp_path).astype(float)
    centre = shot[60:180, 80:240].reshape(-1, 3)  # away from the text overlay at the bottom
    distance = np.linalg.norm(centre[:, None] - QUARTER_COLOURS[None].astype(float), axis=-1)
    nearest = distance.argmin(axis=1)
    assert np.mean(nearest == quarter) > 0.9, np.bincount(nearest, minlength=4)
    assert np.mean(distance.min(axis=1) < 40) > 0.9  # real panorama colours, not a blank page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_headless_chromium_renders_a_2k_panorama(tmp_path):
    """A 1024 x 2048 panorama (the 2K configs' ERP) plays in the page: the view looking right
    shows the right quarter's colour."""
    panorama = quartered_panorama(frames=2, height=1024, width=2048)
    video_io.write_video(tmp_path / "pano.mp4", panorama, fps=8, spherical=True)
    page = tmp_path / "viewer.html"
    viewer.write_viewer(page, (tmp_path / "pano.mp4").read_bytes(), panorama[0], "2K")
    shot = screenshot(page, "#yaw=90", tmp_path).astype(float)
    centre = shot[60:180, 80:240].reshape(-1, 3)
    distance = np.linalg.norm(centre[:, None] - QUARTER_COLOURS[None].astype(float), axis=-1)
    assert np.mean(distance.argmin(axis=1) == 1) > 0.9
    assert np.mean(distance.min(axis=1) < 40) > 0.9
