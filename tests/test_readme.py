"""The README as a test: its shell commands for conversion -> dataset preparation -> training ->
sampling run as written, in the README's order, on stand-ins; then its Python (sampling from
research code) runs on the run those commands trained.

What differs from what a user types is all in the tables below:

- the absolute paths the README names (`/weights`, `/ckpt`, `/data`) point into the test's
  folder (`STAND_IN_ROOTS`), which holds a Wan2.1-T2V release at stand-in size
  (tests/wan_release.py: the published file names and key layouts) and a folder of panoramas
  made from the README's own captions.jsonl example;
- commands that take the 14B recipe get flags that shrink it to the stand-ins' sizes on the CPU
  (`STAND_IN_FLAGS`, per program; the sampling command gets none: it reads the run's config);
- `python` is this interpreter, and the commands run in a folder where `tools/` and `configs/`
  are the checkout's.

When the README and the code drift apart (a renamed flag or config key, a moved script, a new
command this test does not know), a command fails and so does the test
(`test_drift_between_readme_and_code_fails`).
"""

import concurrent.futures
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_train import REPO, subprocess_env
from wan_release import DIT_TINY, write_wan_release

from viewpoint_jax.common.video_io import read_video, write_video

README = REPO / "README.md"
# The README's sections with the pipeline's commands, in order.
SECTIONS = (
    "Converting the real Wan2.1 weights",
    "Preparing a dataset",
    "Training",
    "Generating a 360 video",
)
# The absolute folders the README's commands name; each becomes <test folder>/<name>.
STAND_IN_ROOTS = ("weights", "ckpt", "data")
# The 14B recipe (configs/wan14b.py) at the stand-ins' sizes: the DiT's widths are the stand-in
# release's (tests/wan_release.py), a 32 x 64 ERP clip of 5 frames, two CPU devices, the XLA
# attention (cuDNN's needs a GPU) and grain in the main process (2 cores).
TINY_14B = (
    f"--config.model.dim={DIT_TINY['num_attention_heads'] * DIT_TINY['attention_head_dim']}",
    f"--config.model.ffn_dim={DIT_TINY['ffn_dim']}",
    f"--config.model.num_heads={DIT_TINY['num_attention_heads']}",
    f"--config.model.num_layers={DIT_TINY['num_layers']}",
    f"--config.model.freq_dim={DIT_TINY['freq_dim']}",
    "--config.model.attention_backend=xla",
    "--config.text_encoder.max_length=16",
    "--config.data.erp_height=32",
    "--config.data.erp_width=64",
    "--config.data.map_size=32",
    "--config.data.num_frames=5",
    "--config.data.batch_size=2",
    "--config.data.worker_count=0",
    "--config.sample.steps=2",
)
DEVICES = 2
# Program -> the flags appended to its README commands. A program missing here fails the test:
# a new command in the README needs a line (and a thought about its stand-in size).
STAND_IN_FLAGS = {
    "viewpoint_jax.convert_wan": (),
    "viewpoint_jax.prepare_dataset": (),
    "viewpoint_jax.inspect_dataset": TINY_14B,
    "viewpoint_jax.precompute_latents": TINY_14B,
    "viewpoint_jax.precompute_text": TINY_14B,
    "viewpoint_jax.train": (
        *TINY_14B,
        "--config.num_steps=2",
        "--config.checkpoint.every_steps=2",
        "--config.log.every_steps=1",
        "--config.log.image_every_steps=0",
    ),
    "tools/memory_plan.py": (),  # analytic: the real 14B's shapes, nothing allocated
    "viewpoint_jax.sample": (),  # the run directory's config (saved with the tiny sizes)
}
# Programs that only read what earlier commands wrote (each writes its own outputs): consecutive
# README commands of these run two at a time (2 cores; most of a tiny command is imports and
# compiling, one thread each).
READ_ONLY = {
    "viewpoint_jax.convert_wan",
    "viewpoint_jax.inspect_dataset",
    "viewpoint_jax.precompute_latents",
    "viewpoint_jax.precompute_text",
    "tools/memory_plan.py",
    "viewpoint_jax.sample",
}
# Commands one machine cannot run, by a fragment of theirs -> why (each must still match one).
NOT_RUN = {
    "--coordinator_address=": "several hosts",
    # An hour of CPU; tests/test_pretrain.py replays its first steps against the committed log.
    "-m viewpoint_jax.pretrain": "the committed checkpoint's pretraining",
}


# --- Reading the README ---------------------------------------------------------------------------


def section_text(markdown: str, title: str) -> str:
    """The text under `## title`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def readme_commands(markdown: str) -> list[list[str]]:
    """The shell commands of SECTIONS' bash blocks in order, as argument lists: continuation lines
    joined, comments dropped."""
    commands = []
    for title in SECTIONS:
        for block in code_blocks(section_text(markdown, title), "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                arguments = shlex.split(line, comments=True)
                if arguments:
                    commands.append(arguments)
    return commands


def program(command: list[str]) -> str:
    """`tools/x.py` or the module of `python -m module`."""
    assert command[0] == "python", f"not a python command: {shlex.join(command)}"
    return command[2] if command[1] == "-m" else command[1]


# --- Running it -----------------------------------------------------------------------------------


def stand_in_command(command: list[str], root: Path) -> list[str]:
    """`command` with the stand-ins: this interpreter, paths under `root`, STAND_IN_FLAGS."""
    name = program(command)
    assert name in STAND_IN_FLAGS, f"README runs {name}, which this test does not know"
    pattern = re.compile(rf"(^|=)/({'|'.join(STAND_IN_ROOTS)})/")
    arguments = [pattern.sub(rf"\g<1>{root}/\g<2>/", argument) for argument in command[1:]]
    return [sys.executable, *arguments, *STAND_IN_FLAGS[name]]


def run_readme_command(command: list[str], root: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Runs one README command on the stand-ins (its output is no terminal: plain progress lines,
    no carriage-return bars); an AssertionError quotes the README's command and the error."""
    result = subprocess.run(
        stand_in_command(command, root),
        cwd=cwd,
        env=subprocess_env(DEVICES),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode:
        raise AssertionError(
            f"README command failed (exit {result.returncode}):\n  {shlex.join(command)}\n"
            + "\n".join(result.stderr.strip().splitlines()[-15:])
        )
    assert "\r" not in result.stdout + result.stderr, f"a progress bar in a log: {command}"
    return result


def run_readme_commands(
    commands: list[list[str]], root: Path, cwd: Path
) -> list[subprocess.CompletedProcess]:
    """Runs `commands` in order (consecutive READ_ONLY ones two at a time)."""
    stages: list[list[int]] = []
    for index, command in enumerate(commands):
        joins = stages and program(command) in READ_ONLY
        if joins and all(program(commands[i]) in READ_ONLY for i in stages[-1]):
            stages[-1].append(index)
        else:
            stages.append([index])
    outputs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for stage in stages:
            runs = {i: pool.submit(run_readme_command, commands[i], root, cwd) for i in stage}
            outputs.update({i: run.result() for i, run in runs.items()})
    return [outputs[i] for i in range(len(commands))]


def working_folder(folder: Path) -> Path:
    """Where the commands run: `tools/` and `configs/` as in a checkout."""
    folder.mkdir()
    for name in ("tools", "configs"):
        (folder / name).symlink_to(REPO / name)
    return folder


def panorama_frames(num_frames: int, height: int, seed: int) -> np.ndarray:
    """A smooth equirectangular clip `(F, H, 2H, 3)` uint8 that turns a little every frame."""
    rng = np.random.default_rng(seed)
    lon = np.linspace(0, 2 * np.pi, 2 * height, endpoint=False)
    lat = np.linspace(-np.pi / 2, np.pi / 2, height)[:, None]
    phases = rng.uniform(0, 2 * np.pi, 3)
    frames = []
    for t in range(num_frames):
        turn = lon[None, :] + 0.05 * t
        channels = [np.sin(turn * (k + 1) + p) * np.cos(lat) for k, p in enumerate(phases)]
        frames.append(np.stack(channels, -1))
    return (127.5 + 100 * np.asarray(frames)).astype(np.uint8)


def write_panorama_folder(folder: Path, captions_jsonl: str) -> None:
    """The README's captions.jsonl and a stand-in panorama for every file it names."""
    folder.mkdir(parents=True)
    (folder / "captions.jsonl").write_text(captions_jsonl)
    for seed, line in enumerate(captions_jsonl.splitlines()):
        name = json.loads(line)["file"]
        if name.endswith(".mp4"):
            write_video(folder / name, panorama_frames(24, 64, seed), fps=16.0)
        else:
            cv2.imwrite(str(folder / name), panorama_frames(1, 64, seed)[0, :, :, ::-1])


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.slow
def test_readme_pipeline_runs_as_written(tmp_path):
    markdown = README.read_text()
    commands = readme_commands(markdown)
    skipped = {fragment: [c for c in commands if fragment in shlex.join(c)] for fragment in NOT_RUN}
    assert all(skipped.values()), f"NOT_RUN entries the README no longer has: {skipped}"
    commands = [c for c in commands if not any(c in found for found in skipped.values())]
    names = [program(c) for c in commands]
    assert names.index("viewpoint_jax.convert_wan") < names.index("viewpoint_jax.prepare_dataset")
    assert names.index("viewpoint_jax.prepare_dataset") < names.index("viewpoint_jax.train")
    assert names.index("viewpoint_jax.train") < names.index("viewpoint_jax.sample")
    # The first sampling command needs nothing but the run, a prompt and an output folder.
    sample = commands[names.index("viewpoint_jax.sample")]
    assert sorted(a for a in sample if a.startswith("--")) == ["--checkpoint", "--out", "--prompt"]

    root = tmp_path / "machine"
    write_wan_release(root / "weights" / "Wan2.1-T2V-14B")
    prepare = commands[names.index("viewpoint_jax.prepare_dataset")]
    (captions,) = code_blocks(section_text(markdown, "Preparing a dataset"), "json")
    write_panorama_folder(Path(option(stand_in_command(prepare, root), "--src")), captions)
    cwd = working_folder(tmp_path / "work")
    # The perspective video the sampling command conditions on.
    write_video(cwd / "front.mp4", panorama_frames(9, 32, 7)[:, :, :32], fps=16.0)

    outputs = run_readme_commands(commands, root, cwd)

    dit = json.loads((root / "ckpt" / "wan14b_dit" / "config.json").read_text())
    assert (dit["in_dim"], dit["param_dtype"], dit["dim"]) == (33, "bfloat16", 48)
    for converted in ("wan_vae", "umt5_xxl"):
        assert (root / "ckpt" / converted / "config.json").is_file()
    assert "train: 1 videos" in outputs[names.index("viewpoint_jax.prepare_dataset")].stdout
    # Each long job reports its progress in plain lines (`progress.Progress`).
    for name, line in (
        ("viewpoint_jax.convert_wan", "converting wan14b_dit: 0 B/"),
        ("viewpoint_jax.prepare_dataset", "encoding: file 2/2 ("),
        ("viewpoint_jax.precompute_latents", "encoding train: record 2/2 ("),
        ("viewpoint_jax.precompute_text", "embedding: caption 3/3 ("),
        ("viewpoint_jax.train", "train: step 2/2 ("),
        ("viewpoint_jax.sample", "sampling: step 2/2 ("),
        ("viewpoint_jax.sample", f"reading {cwd / 'runs' / 'vp14b'}"),
    ):
        assert line in outputs[names.index(name)].stderr, (name, line)
    assert (cwd / "sheet.png").is_file()
    run = json.loads((cwd / "runs" / "vp14b" / "config.json").read_text())
    assert run["model"]["init_checkpoint"] == str(root / "ckpt" / "wan14b_dit")
    assert run["data"]["name"] == "my_panoramas" and run["num_steps"] == 2
    for index, name in enumerate(names):
        if name == "viewpoint_jax.sample":
            out = cwd / option(commands[index], "--out")
            for file in ("pano.mp4", "viewpoint.mp4", "faces.png", "viewer.html"):
                assert (out / file).is_file(), f"{out / file} missing"
            frames, _ = read_video(out / "pano.mp4")
            assert frames.shape[1:] == (32, 64, 3) and len(frames) == 5

    # The README's Python, on the run its commands trained, with its 50 steps at the stand-ins' 2.
    (snippet,) = code_blocks(section_text(markdown, "Generating a 360 video"), "python")
    assert snippet.count("num_steps=50") == 1, "the README's sampling settings changed"
    check = (
        "\nimport json\n"
        "print(json.dumps([result.panorama.shape, result.panorama.dtype.name, map_video.shape]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", snippet.replace("num_steps=50", "num_steps=2") + check],
        cwd=cwd,
        env=subprocess_env(DEVICES),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, "README's Python failed:\n" + result.stderr[-3000:]
    panorama, dtype, map_video = json.loads(result.stdout.strip().splitlines()[-1])
    # front.mp4's 9 frames, the run's 32 x 64 ERP and 32 x 32 map.
    assert (panorama, dtype, map_video) == ([9, 32, 64, 3], "uint8", [1, 9, 32, 32, 3])


# --- The test fails when README and code drift apart --------------------------------------------

# README text -> a drifted copy: what it breaks.
DRIFTS = {
    "--in_dim=33": ("--in_dims=33", "unknown flag --in_dims"),
    "--config.data.name=my_panoramas --out sheet.png": (
        "--config.data.nmae=my_panoramas --out sheet.png",
        "unknown config key --config.data.nmae",
    ),
    "--config configs/wan14b.py --workdir runs/vp14b": (
        "--config configs/wan_14b.py --workdir runs/vp14b",
        "configs/wan_14b.py",
    ),
    "python -m viewpoint_jax.prepare_dataset": (
        "python -m viewpoint_jax.prepare_datasets",
        "README runs viewpoint_jax.prepare_datasets, which this test does not know",
    ),
}


@pytest.mark.parametrize("original", DRIFTS)
def test_drift_between_readme_and_code_fails(original, tmp_path):
    markdown = README.read_text()
    assert original in markdown, f"the README no longer has {original!r}: pick another drift"
    drifted_text, message = DRIFTS[original]
    before = readme_commands(markdown)
    after = readme_commands(markdown.replace(original, drifted_text))
    (drifted,) = [command for command in after if command not in before]
    cwd = working_folder(tmp_path / "work")
    with pytest.raises(AssertionError, match=re.escape(message)):
        run_readme_command(drifted, tmp_path / "machine", cwd)
