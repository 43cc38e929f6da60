"""Video writing: H.264 MP4 readable by OpenCV and ffprobe, with spherical metadata."""

import json
import shutil
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from viewpoint_jax.common import video_io

FFPROBE = shutil.which("ffprobe")


def gradient_video(frames=5, height=32, width=64):
    """Smooth colours that change over time (H.264 keeps them within a few levels)."""
    i, j = np.mgrid[0:height, 0:width]
    video = np.zeros((frames, height, width, 3), np.uint8)
    for f in range(frames):
        video[f, ..., 0] = 255 * j // width
        video[f, ..., 1] = 255 * i // height
        video[f, ..., 2] = 25 * f
    return video


def ffprobe_stream(path):
    result = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["streams"][0]


def top_level_boxes(data):
    return [kind for kind, *_ in video_io._iter_boxes(data, 0, len(data))]


def test_write_video_round_trips_through_opencv(tmp_path):
    video = gradient_video()
    path = tmp_path / "v.mp4"
    video_io.write_video(path, video, fps=12)
    frames, fps = video_io.read_video(path)
    assert frames.shape == video.shape and fps == pytest.approx(12)
    assert np.abs(frames.astype(int) - video).mean() < 3
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_odd_sizes_are_padded_to_even(tmp_path):
    video = gradient_video(frames=1, height=31, width=63)
    video_io.write_video(tmp_path / "odd.mp4", video, fps=1)
    frames, _ = video_io.read_video(tmp_path / "odd.mp4")
    assert frames.shape == (1, 32, 64, 3)
    assert np.abs(frames[0, :31, :63].astype(int) - video[0]).mean() < 3


@pytest.mark.skipif(FFPROBE is None, reason="ffprobe not installed")
def test_spherical_metadata_is_seen_by_ffprobe(tmp_path):
    path = tmp_path / "pano.mp4"
    video_io.write_video(path, gradient_video(), fps=8, spherical=True)
    stream = ffprobe_stream(path)
    assert stream["codec_name"] == "h264" and int(stream["nb_frames"]) == 5
    side_data = {entry["side_data_type"]: entry for entry in stream.get("side_data_list", [])}
    assert side_data["Spherical Mapping"]["projection"] == "equirectangular"
    assert side_data["Stereo 3D"]["type"] == "2D"
    plain = tmp_path / "plain.mp4"
    video_io.write_video(plain, gradient_video(), fps=8)
    assert "side_data_list" not in ffprobe_stream(plain)


def test_spherical_v1_xml_is_in_the_video_track(tmp_path):
    path = tmp_path / "pano.mp4"
    video_io.write_video(path, gradient_video(), fps=8, spherical=True)
    data = path.read_bytes()
    ((_, _, moov, moov_end),) = [
        b for b in video_io._iter_boxes(data, 0, len(data)) if b[0] == b"moov"
    ]
    ((_, _, trak, trak_end),) = [
        b for b in video_io._iter_boxes(data, moov, moov_end) if b[0] == b"trak"
    ]
    uuids = [
        data[payload:end]
        for kind, _, payload, end in video_io._iter_boxes(data, trak, trak_end)
        if kind == b"uuid"
    ]
    assert len(uuids) == 1 and uuids[0][:16] == video_io.SPHERICAL_V1_UUID
    assert b"<GSpherical:ProjectionType>equirectangular<" in uuids[0]


def test_metadata_keeps_frames_when_moov_precedes_mdat(tmp_path):
    """With `faststart` the moov box comes first; growing it must shift every chunk offset."""
    video = gradient_video(frames=9)
    video_io.write_video(tmp_path / "a.mp4", video, fps=8)
    faststart = tmp_path / "fast.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    source = tmp_path / "a.mp4"
    command = f"{ffmpeg} -loglevel error -i {source} -c copy -movflags +faststart {faststart}"
    subprocess.run(command.split(), check=True)
    data = faststart.read_bytes()
    assert top_level_boxes(data).index(b"moov") < top_level_boxes(data).index(b"mdat")
    tagged = tmp_path / "tagged.mp4"
    tagged.write_bytes(video_io.add_spherical_metadata(data))
    before, _ = video_io.read_video(faststart)
    after, _ = video_io.read_video(tagged)
    np.testing.assert_array_equal(before, after)
    if FFPROBE:
        kinds = [e["side_data_type"] for e in ffprobe_stream(tagged).get("side_data_list", [])]
        assert "Spherical Mapping" in kinds


def test_bad_frames_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        video_io.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match="fps"):
        video_io.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=0)
    with pytest.raises(ValueError, match="not an MP4"):
        video_io.add_spherical_metadata(b"\x00\x00\x00\x10ftypisom\x00\x00\x00\x00")
    assert not list(tmp_path.iterdir())


def _lavfi(path, *args):
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi"]
    subprocess.run(
        [*command, *args, "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True
    )
    return path


def test_decode_frames_resamples_by_timestamp_and_keeps_the_top_eye(tmp_path):
    # 2 s at 30 fps: red top eye over a blue bottom eye, each 64 x 32.
    path = _lavfi(
        tmp_path / "tb.mkv",
        "-i", "color=red:size=64x32:rate=30:duration=2",
        "-f", "lavfi", "-i", "color=blue:size=64x32:rate=30:duration=2",
        "-filter_complex", "vstack", "-metadata:s:v", "stereo_mode=top_bottom",
    )  # fmt: skip
    frames = np.stack(list(video_io.decode_frames(path, (16, 32), fps=16, stereo="top-bottom")))
    assert frames.shape == (32, 16, 32, 3)  # 2 s x 16 fps, scaled to 16 x 32
    assert frames[..., 0].min() > 200 and frames[..., 2].max() < 60
    every_frame = list(video_io.decode_frames(path, (64, 64)))
    assert len(every_frame) == 60
    both_eyes = every_frame[0]
    assert both_eyes[:32, :, 0].mean() > 200 and both_eyes[32:, :, 2].mean() > 200


def test_probe_media_with_and_without_ffprobe(tmp_path, monkeypatch):
    stereo = _lavfi(
        tmp_path / "tb.mkv", "-i", "testsrc2=size=64x64:rate=25:duration=1",
        "-metadata:s:v", "stereo_mode=top_bottom",
    )  # fmt: skip
    spherical = tmp_path / "pano.mp4"
    video_io.write_video(spherical, gradient_video(frames=6), fps=12, spherical=True)
    cut_off = tmp_path / "cut.mp4"
    cut_off.write_bytes(spherical.read_bytes()[:200])
    expected = {
        stereo: video_io.MediaInfo(64, 64, 25.0, 1.0, "h264", "top-bottom", None),
        spherical: video_io.MediaInfo(64, 32, 12.0, 0.5, "h264", "mono", "equirectangular"),
    }
    for use_ffprobe in ([True] if FFPROBE else []) + [False]:
        if not use_ffprobe:
            monkeypatch.setattr(video_io, "ffprobe_exe", lambda: None)
        for path, info in expected.items():
            assert video_io.probe_media(path) == info, (use_ffprobe, path)
        with pytest.raises(video_io.UnreadableMediaError, match=r"cut\.mp4: .*Invalid data"):
            video_io.probe_media(cut_off)
        with pytest.raises(video_io.UnreadableMediaError) as error:
            list(video_io.decode_frames(cut_off, (8, 16)))
        assert str(cut_off) in str(error.value) and "ffmpeg failed" in error.value.reason


def test_a_cut_off_faststart_video_reads_with_a_warning(tmp_path, caplog):
    """Its index (moov) comes first, so a truncated copy still opens: the frames it still holds
    are read and the shortfall against the declared count is logged."""
    import subprocess

    import imageio_ffmpeg

    whole = tmp_path / "whole.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=64x32:rate=8:duration=2", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(whole)],
        check=True,
    )  # fmt: skip
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 8 // 10])  # the first frames still decode
    full, _ = video_io.read_video(whole)
    with caplog.at_level("WARNING"):
        partial, _ = video_io.read_video(cut)
    assert 0 < len(partial) < len(full) == 16
    assert f"decoding stopped at frame {len(partial)} of the 16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        video_io.read_video(whole)
    assert "decoding stopped" not in caplog.text
