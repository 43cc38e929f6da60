"""Every entry point's front door: `--help` lists the flags and exits 0; a misspelt flag or config
key is one `error:` line naming it (with the close match) and exit 2, never a traceback. All of
these fail during flag parsing, before any JAX work."""

import subprocess
import sys
from pathlib import Path

import pytest
from test_train import REPO, subprocess_env

# entry point -> (command, a flag its help lists, a misspelling of it, the flag it suggests)
ENTRY_POINTS = {
    "train": (["-m", "viewpoint_jax.train"], "workdir", "--workdri=x", "--workdir"),
    "sample": (["-m", "viewpoint_jax.sample"], "negative_prompt", "--negative-prompt=x", None),
    "demo": (["-m", "viewpoint_jax.demo"], "train_steps", "--train_stpes=3", "--train_steps"),
    "convert": (["-m", "viewpoint_jax.convert_wan"], "in_dim", "--in_dmi=33", "--in_dim"),
    "precompute_text": (
        ["-m", "viewpoint_jax.precompute_text"],
        "cache_dir",
        "--cache_dri=x",
        "--cache_dir",
    ),
    "precompute_latents": (
        ["-m", "viewpoint_jax.precompute_latents"],
        "image_samples",
        "--smaples=2",
        "--samples",
    ),
    "memory_plan": (["tools/memory_plan.py"], "hbm_gb", "--hbm_bg=40", "--hbm_gb"),
    "show_projection": (["tools/show_projection.py"], "map_size", "--map-size=64", None),
    "prepare_dataset": (
        ["-m", "viewpoint_jax.prepare_dataset"],
        "workers",
        "--dry-run",
        "--dry_run",
    ),
    "inspect_dataset": (
        ["-m", "viewpoint_jax.inspect_dataset"],
        "num_batches",
        "--num_batch=2",
        None,
    ),
    "condition_ablation": (
        ["-m", "viewpoint_jax.condition_ablation"],
        "seeds",
        "--seds=1",
        "--seeds",
    ),
    "evaluate": (["-m", "viewpoint_jax.evaluate"], "view_size", "--view_sise=4", "--view_size"),
    "bench_convert": (["tools/bench_convert.py"], "sizes_gb", "--sizes-gb=1", "--sizes_gb"),
    "bench_dit": (["tools/bench_dit.py"], "compile_layers", "--peak-tflops=1", "--peak_tflops"),
    "bench_prepare": (["tools/bench_prepare.py"], "seconds", "--repeat=1", "--repeats"),
    "bench_projection": (["tools/bench_projection.py"], "map_size", "--map-size=64", "--map_size"),
    "bench_sample": (["tools/bench_sample.py"], "devices", "--map-size=64", "--map_size"),
    "bench_vae": (["tools/bench_vae.py"], "tiled_size", "--skip-tiled", "--skip_tiled"),
    "bench_seam_metric": (["tools/bench_seam_metric.py"], "turns", "--turn=3", "--turns"),
    "bench_lora": (["tools/bench_lora.py"], "rounds", "--round=3", "--rounds"),
    "bench_sequence_parallel": (
        ["tools/bench_sequence_parallel.py"],
        "head_dim",
        "--head-dim=64",
        "--head_dim",
    ),
    "lora_study": (["tools/lora_study.py"], "train_steps", "--train-steps=3", "--train_steps"),
    "demo_dataset": (
        ["-m", "viewpoint_jax.make_demo_dataset"],
        "num_train",
        "--num-train=3",
        "--num_train",
    ),
    "ablation": (["-m", "viewpoint_jax.ablation"], "arms", "--train_stpes=3", "--train_steps"),
    "pretrain": (["-m", "viewpoint_jax.pretrain"], "workdir", "--wrokdir=x", "--workdir"),
}
CONFIG_TAKING = (
    "train",
    "sample",
    "precompute_text",
    "precompute_latents",
    "inspect_dataset",
    "pretrain",
)


def run_entry_point(command: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(),
        timeout=120,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_lists_the_flags(name):
    command, flag, _, _ = ENTRY_POINTS[name]
    result = run_entry_point(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"--{flag}:" in result.stdout


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_a_misspelt_flag_is_one_line(name):
    command, _, misspelt, suggestion = ENTRY_POINTS[name]
    result = run_entry_point(command, misspelt)
    name_given = misspelt.split("=")[0]
    assert_one_error_line(
        result, f"unknown flag {name_given}", *([suggestion] if suggestion else [])
    )


@pytest.mark.parametrize("name", CONFIG_TAKING)
def test_a_misspelt_config_key_is_one_line(name):
    command = ENTRY_POINTS[name][0]
    result = run_entry_point(
        command, "--config=configs/tiny.py:micro", "--config.data.nmae=x", "--checkpoint=x"
    )
    assert_one_error_line(result, "--config.data.nmae", "'name'")


def test_a_config_file_that_does_not_load_is_one_line():
    result = run_entry_point(["-m", "viewpoint_jax.train"], "--config=nope.py", "--workdir=x")
    assert_one_error_line(result, "--config", "nope.py")


def test_a_stray_positional_argument_is_refused():
    result = run_entry_point(["-m", "viewpoint_jax.demo"], "quick")
    assert_one_error_line(result, "unexpected argument 'quick'")


def test_every_tool_is_checked():
    tools = {Path(command[0]).name for command, *_ in ENTRY_POINTS.values()}
    assert {path.name for path in (REPO / "tools").glob("*.py")} <= tools


def test_library_chatter_is_off_unless_asked_for():
    """absl's INFO lines (Orbax logs each save and restore there) stay out of a command's output;
    `--verbosity=0` shows them; warnings always show."""
    script = (
        "from absl import logging\n"
        "from viewpoint_jax.common.cli import run\n"
        "run(lambda argv: logging.info('info line') or logging.warning('warning line') or 0)\n"
    )
    for args, shows_info in (((), False), (("--verbosity=0",), True)):
        result = run_entry_point(["-c", script], *args)
        assert result.returncode == 0, result.stderr
        assert ("info line" in result.stderr) == shows_info, result.stderr
        assert "warning line" in result.stderr
