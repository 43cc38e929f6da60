"""configs/wan.py is the paper's recipe by default: its condition, a DiT fine-tuned from converted
weights (training without them is refused, every missing input named at once), and the start-up
summary says both; docs/paper-recipe.md covers every setting the config sets."""

import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from viewpoint_jax.data import conditions
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import (
    check_run_inputs,
    init_checkpoint,
    load_config_file,
    mesh_and_rules,
    validate_config,
)
from viewpoint_jax.training import telemetry

REPO = Path(__file__).resolve().parents[1]


def wan(arg="14b"):
    return load_config_file(f"{REPO / 'configs/wan.py'}:{arg}")


def _inputs(tmp_path, config):
    """Existing stand-ins for every path of a Wan config but the DiT's."""
    for name in ("vae", "umt5", "tokenizer"):
        (tmp_path / name).mkdir()
    info = tmp_path / "data/panoramic_videos/my_panoramas/1.0.0/dataset_info.json"
    info.parent.mkdir(parents=True)
    info.write_text("{}")
    config.autoencoder.checkpoint = str(tmp_path / "vae")
    config.text_encoder.checkpoint = str(tmp_path / "umt5")
    config.text_encoder.tokenizer = str(tmp_path / "tokenizer")
    config.data.data_dir, config.data.name = str(tmp_path / "data"), "my_panoramas"
    return config


@pytest.mark.parametrize("size", ["14b", "1_3b"])
def test_the_wan_configs_train_the_papers_condition_and_the_variant_every_condition(size):
    mixture = conditions.parse_mixture(wan(size).data.condition_mixture)
    assert {k for k, w in mixture.items() if w} == {conditions.ConditionKind.PERSPECTIVE_VIDEO}
    variant = wan(f"{size}_all_conditions")
    assert dict(variant.data.condition_mixture) == conditions.DEFAULT_CONDITION_MIXTURE
    assert variant.model.preset == wan(size).model.preset
    with pytest.raises(ValueError, match=r"configs/wan\.py takes one of"):
        wan("14b_some_conditions")


def test_a_wan_run_without_converted_weights_is_refused_unless_from_scratch_is_asked(tmp_path):
    config = _inputs(tmp_path, wan())
    with pytest.raises(ValueError) as refused:
        check_run_inputs(config)
    message = str(refused.value)
    assert "\n" not in message  # one problem, one line
    assert message.startswith("config.model.init_checkpoint: preset 'wan_14b' is fine-tuned")
    assert "python -m viewpoint_jax.convert_wan dit" in message
    assert "--config.model.init_checkpoint=none" in message
    config.model.init_checkpoint = "none"
    check_run_inputs(config)
    assert init_checkpoint(config) is None  # random init, as asked
    (tmp_path / "dit").mkdir()
    config.model.init_checkpoint = str(tmp_path / "dit")
    check_run_inputs(config)
    assert init_checkpoint(config) == str(tmp_path / "dit")


def test_every_missing_input_is_named_at_once_a_line_each(tmp_path):
    config = wan("1_3b")
    config.model.init_checkpoint = str(tmp_path / "no_dit")
    config.autoencoder.checkpoint = str(tmp_path / "no_vae")
    config.text_encoder.tokenizer = str(tmp_path / "no_spiece.model")
    config.data.data_dir = str(tmp_path / "no_data")
    with pytest.raises(ValueError) as refused:
        check_run_inputs(config)
    lines = str(refused.value).splitlines()
    assert lines[0] == "5 problems with the run's inputs:"
    keys = [line.split(":")[0] for line in lines[1:]]
    assert keys == [
        "config.model.init_checkpoint",
        "config.autoencoder.checkpoint",
        "config.text_encoder.checkpoint",
        "config.text_encoder.tokenizer",
        "config.data.data_dir, config.data.name",
    ]
    assert f"{tmp_path / 'no_vae'} does not exist" in lines[2]
    assert "config.text_encoder.checkpoint: not set" in lines[3]
    # A run fed batches reads no dataset: that line goes.
    with pytest.raises(ValueError, match=r"^4 problems"):
        check_run_inputs(config, reads_dataset=False)


def test_the_train_command_refuses_the_cards_command_in_one_line(tmp_path):
    """README's training command without --config.model.init_checkpoint."""
    config = _inputs(tmp_path, wan())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "viewpoint_jax.train",
            f"--config={REPO / 'configs/wan14b.py'}",
            f"--workdir={tmp_path / 'run'}",
            f"--config.autoencoder.checkpoint={config.autoencoder.checkpoint}",
            f"--config.text_encoder.checkpoint={config.text_encoder.checkpoint}",
            f"--config.text_encoder.tokenizer={config.text_encoder.tokenizer}",
            f"--config.data.data_dir={config.data.data_dir}",
            "--config.data.name=my_panoramas",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: config.model.init_checkpoint: preset 'wan_14b'")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_the_summary_names_the_papers_condition_and_the_converted_start(tmp_path):
    config = _inputs(tmp_path, wan())
    (tmp_path / "dit").mkdir()
    config.model.init_checkpoint = str(tmp_path / "dit")
    validate_config(config, num_devices=1)
    mesh, _ = mesh_and_rules(config, jax.devices()[:1])
    summary = telemetry.startup_summary(config, mesh, build.dit_config(config)).splitlines()
    assert "condition: perspective_video 1 (paper)" in summary
    assert f"DiT: starts from converted weights {tmp_path / 'dit'}" in summary
    config.model.init_checkpoint = "none"
    config.data.condition_mixture = wan("14b_all_conditions").data.condition_mixture
    summary = telemetry.recipe_summary(config).splitlines()
    assert summary == [
        "condition: multi_view 0.05, none 0.1, perspective_image 0.1, perspective_video 0.7, "
        "prefix 0.05 (this project's mixture; the paper's is perspective_video)",
        "DiT: starts from a random initialisation (trained from scratch)",
    ]


def _flat_keys(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_the_recipe_document_covers_every_setting_configs_wan_sets():
    """docs/paper-recipe.md has a row per key configs/wan.py sets (the assignments in its
    source), each row says "paper" or "ours", and no config docstring calls our choices the
    paper's setup."""
    source = (REPO / "configs/wan.py").read_text()
    keys = set(re.findall(r"config\.((?:[a-z_]+\.)*[a-z_]+) = ", source))
    document = (REPO / "docs/paper-recipe.md").read_text()
    rows = [line for line in document.splitlines() if line.startswith("| `")]
    documented = {key for row in rows for key in re.findall(r"`([a-z_.]+)`", row.split(" | ")[0])}
    assert keys <= documented, sorted(keys - documented)
    for row in rows:
        assert re.search(r"\| (paper|ours|paper \+ ours)\b", row), row
    for name in ("wan.py", "wan14b.py", "wan1_3b.py"):
        docstring = (REPO / "configs" / name).read_text().split('"""')[1]
        assert "the paper's setup" not in docstring and "the paper's recipe" not in docstring
        assert "docs/paper-recipe.md" in docstring, name
