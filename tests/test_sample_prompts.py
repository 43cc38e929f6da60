"""Many videos from a --prompts file: lines checked one by one, finished outputs skipped on a
rerun, and the lines split over processes (jax.distributed) and over device groups."""

import dataclasses
import json
import socket
import subprocess
import sys

import cv2
import jax
import numpy as np
from test_sample_cli import REPO, run_in_process, tiny_run  # noqa: F401 (a fixture)
from test_train import subprocess_env

from viewpoint_jax.common import video_io
from viewpoint_jax.common.cli import UserError
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation.generate import generate
from viewpoint_jax.generation.models import load_models, sampling_config, sampling_meshes
from viewpoint_jax.generation.outputs import faces_contact_sheet
from viewpoint_jax.generation.requests import Request, read_prompt_file


def _write_lines(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_lines_take_the_flags_as_defaults_and_bad_lines_are_named(tmp_path):
    prompts = _write_lines(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a beach", "seed": 3},
            {"prompt": "a forest", "name": "forest", "yaw": 45},
            "{not json",
            {"prompt": "x", "fov": 200},
            {"prompt": "y", "colour": "red"},
            {"prompt": "z", "name": "forest"},
            "",
            {"prompt": "w", "video": "a.mp4", "image": "b.png"},
        ],
    )
    defaults = Request(prompt="", fov=70.0, seed=9)
    requests = read_prompt_file(prompts, defaults)
    assert len(requests) == 7  # the empty line is no request
    beach, forest, *bad = requests
    assert (beach.name, beach.seed, beach.fov) == ("00001", 3, 70.0)
    assert (forest.name, forest.yaw, forest.seed) == ("forest", 45, 9)
    assert all(isinstance(e, UserError) for e in bad)
    messages = [str(e) for e in bad]
    assert messages[0].startswith(f"{prompts} line 3: ")
    assert "line 4: fov must be in (0, 180) degrees, got 200" in messages[1]
    assert "line 5: unknown keys ['colour']" in messages[2]
    assert "line 6: name 'forest' is used by an earlier line" in messages[3]
    assert "line 8: video and image cannot be combined" in messages[4]


def test_a_prompt_file_generates_each_line_once_and_a_rerun_skips_them(
    tiny_run,  # noqa: F811
    tmp_path,
    capsys,
):
    prompts = _write_lines(
        tmp_path / "p.jsonl",
        [{"prompt": "one", "name": "one"}, {"prompt": "bad", "pitch": 120}, {"prompt": "two"}],
    )
    args = ["--checkpoint", str(tiny_run), "--prompts", str(prompts), "--steps", "2"]
    code, stderr = run_in_process([*args, "--out", str(tmp_path / "out")], capsys)
    assert code == 1, stderr  # the bad line
    assert "line 2: pitch must be in [-90, 90]" in stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00003", "one"]
    record = json.loads((tmp_path / "out" / "one" / "settings.json").read_text())
    assert record["prompt"] == "one" and video_io.read_video(tmp_path / "out/one/pano.mp4")[0].size
    made = (tmp_path / "out" / "one" / "pano.mp4").stat().st_mtime_ns
    code, stderr = run_in_process([*args, "--out", str(tmp_path / "out")], capsys)
    assert "0 to generate, 2 finished skipped" in stderr
    assert (tmp_path / "out" / "one" / "pano.mp4").stat().st_mtime_ns == made


def test_two_processes_split_the_lines(tiny_run, tmp_path):  # noqa: F811
    prompts = _write_lines(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(3)])
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = []
    for index in range(2):
        env = subprocess_env()
        env.update(
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(index),
        )
        command = [sys.executable, "-m", "viewpoint_jax.sample", "--checkpoint", str(tiny_run),
                   "--prompts", str(prompts), "--steps", "2", "--out", str(tmp_path / "out")]  # fmt: skip
        processes.append(
            subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
        )
    errors = [p.communicate(timeout=400)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], errors
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00001", "00002", "00003"]
    # Lines 1 and 3 on process 0, line 2 on process 1: each made once.
    assert "2 to generate" in errors[0] and "1 to generate" in errors[1]


def test_prompt_and_prompts_are_one_or_the_other(tiny_run, tmp_path, capsys):  # noqa: F811
    prompts = _write_lines(tmp_path / "p.jsonl", [{"prompt": "a"}])
    common = ["--checkpoint", str(tiny_run), "--out", str(tmp_path / "o")]
    code, stderr = run_in_process([*common, "--prompt", "a", "--prompts", str(prompts)], capsys)
    assert code == 2 and "pass --prompt (one video) or --prompts FILE.jsonl" in stderr
    code, stderr = run_in_process([*common, "--prompts", str(tmp_path / "none.jsonl")], capsys)
    assert code == 2 and "--prompts: no such file" in stderr


def test_device_groups_make_each_line_once_as_one_device_would(
    tiny_run,  # noqa: F811
    tmp_path,
    capsys,
):
    """--mesh fsdp=2 on 8 devices: 4 device groups, each with a model replica, share 5 lines
    (group 0 makes 2). Every output is made once, as a one-device run makes the same line and
    seed, and the sampling loop is compiled once per group, not once per line."""
    prompts = _write_lines(
        tmp_path / "p.jsonl", [{"prompt": f"scene {i}", "seed": i} for i in range(5)]
    )
    names = [f"{i:05d}" for i in range(1, 6)]
    out = tmp_path / "out"
    common = ["--checkpoint", str(tiny_run), "--steps", "2", "--dtype", "float32"]
    compiled = denoising.sample_latents._cache_size()
    code, stderr = run_in_process(
        [*common, "--prompts", str(prompts), "--mesh", "fsdp=2", "--out", str(out)], capsys
    )
    assert code == 0, stderr
    assert denoising.sample_latents._cache_size() - compiled == 4
    assert sorted(p.name for p in out.iterdir()) == names
    written = sorted(line for line in stderr.splitlines() if line.startswith("wrote "))
    assert written == [f"wrote {out / name}" for name in names]

    config = sampling_config(tiny_run)
    settings = denoising.SampleSettings.from_config(config.sample, num_steps=2)
    one_device = sampling_meshes(None, jax.devices()[:1])[0]
    models = load_models(config, tiny_run, mesh=one_device, dtype="float32")
    for request in read_prompt_file(prompts, Request(prompt="")):
        made = out / request.name
        assert json.loads((made / "settings.json").read_text())["seed"] == request.seed
        settings = dataclasses.replace(settings, seed=request.seed)
        single = generate(models, request.prompt, settings).panorama
        ours = cv2.cvtColor(cv2.imread(str(made / "faces.png")), cv2.COLOR_BGR2RGB)
        theirs = faces_contact_sheet(single)
        # fp32 sums in another order on the 2-device group: at most one uint8 level apart.
        assert np.abs(ours.astype(int) - theirs).max() <= 1, request.name
