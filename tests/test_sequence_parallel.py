"""Sequence-parallel self-attention (models/attention.py, `SequenceParallel`) on 8 simulated CPU
devices (tests/conftest.py): Ulysses and ring attention equal single-device attention, forward
and gradients, with the collectives their layouts promise; subregion attention splits by
subregion without communication; a DiT training step with sequence=4 and the sampler with
sequence=2 equal one device's; the train step compiles for a TPU with a sequence axis; the
refusals name their config keys."""

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_attention import BF16_U, _assert_grads_within_rounding
from test_train import _two_steps, micro_config, procedural_records

from viewpoint_jax.common import sharding
from viewpoint_jax.data import pipeline
from viewpoint_jax.diffusion import denoising
from viewpoint_jax.generation.generate import generate
from viewpoint_jax.generation.models import load_config, load_models, sampling_mesh
from viewpoint_jax.models import attention
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models.attention import SequenceParallel
from viewpoint_jax.setup import build
from viewpoint_jax.setup.config import validate_config
from viewpoint_jax.studies import tpu_compile

REPO = Path(__file__).resolve().parents[1]
_COLLECTIVE = re.compile(r"all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter")
SEQ4_FSDP2 = dict(sequence=4, fsdp=2)
SEQ8 = dict(sequence=8)


def _qkv(batch=2, length=64, heads=8, dim=16, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return [jnp.asarray(rng.standard_normal((batch, length, heads, dim)), dtype) for _ in range(4)]


def _attend(backend, mode, groups, interpret=False):
    return lambda q, k, v: attention.attend(q, k, v, backend, mode, groups, interpret=interpret)


def _forward_and_grads(attend, q, k, v, w, mesh=None):
    """attend(q, k, v) and the gradients of sum(attend * w), under `mesh` with the operands
    sharded as `dit.Attention` constrains them; with the forward program's collectives."""
    loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * w)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    if mesh is None:
        return jax.jit(attend)(q, k, v), grad(q, k, v), None
    q, k, v, w = (
        jax.device_put(x, sharding.named_sharding(mesh, attention.HEADS_AXES, x.shape))
        for x in (q, k, v, w)
    )
    with sharding.use_mesh(mesh):
        compiled = jax.jit(attend).lower(q, k, v).compile()
        grads = grad(q, k, v)
    collectives = set(_COLLECTIVE.findall(compiled.as_text()))
    return compiled(q, k, v), grads, collectives


def _assert_close(actual, expected):
    """fp32 to ~1e-6 of the largest value (the merge order of the softmax sums differs)."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        e = np.asarray(e)
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-6, atol=1e-6 * np.abs(e).max())


@pytest.mark.parametrize("mesh_sizes", [SEQ4_FSDP2, SEQ8], ids=["seq4xfsdp2", "seq8"])
@pytest.mark.parametrize(
    "mode, collective",
    [(SequenceParallel.ULYSSES, "all-to-all"), (SequenceParallel.RING, "collective-permute")],
)
def test_pano_attention_split_over_sequence_equals_single_device(mode, collective, mesh_sizes):
    """Pano attention (all tokens): Ulysses moves data by all-to-alls only, ring attention by
    ppermutes only, and neither gathers keys; both equal one device's xla attention."""
    q, k, v, w = _qkv()
    expected = _forward_and_grads(_attend("xla", SequenceParallel.GATHER, 1), q, k, v, w)
    mesh = sharding.make_mesh(mesh_sizes)
    out, grads, collectives = _forward_and_grads(_attend("xla", mode, 1), q, k, v, w, mesh)
    assert collectives == {collective}
    _assert_close((out, grads), expected[:2])


@pytest.mark.parametrize(
    "mesh_sizes, collectives",
    [
        (SEQ4_FSDP2, set()),  # one subregion per device: nothing moves
        (dict(sequence=2, data=2, fsdp=2), set()),  # two per device
        (SEQ8, None),  # half a subregion per device: Ulysses' all-to-alls, or rings of 2
    ],
    ids=["seq4", "seq2", "seq8"],
)
@pytest.mark.parametrize("mode", [SequenceParallel.ULYSSES, SequenceParallel.RING])
def test_subregion_attention_split_by_subregion(mode, mesh_sizes, collectives):
    """groups=4 (subregion attention on subregion-major tokens): where mesh.sequence divides 4
    each device attends its own subregions with no communication at all."""
    q, k, v, w = _qkv()
    expected = _forward_and_grads(_attend("xla", SequenceParallel.GATHER, 4), q, k, v, w)
    mesh = sharding.make_mesh(mesh_sizes)
    out, grads, found = _forward_and_grads(_attend("xla", mode, 4), q, k, v, w, mesh)
    if collectives is None:
        collectives = {"all-to-all" if mode == SequenceParallel.ULYSSES else "collective-permute"}
    assert found == collectives
    _assert_close((out, grads), expected[:2])


def test_a_batch_the_mesh_does_not_split_keeps_its_gradients():
    """Batch 1 on fsdp=2: the operands are replicated over fsdp inside `shard_map`; their
    gradients must not be summed over the replicas."""
    q, k, v, w = _qkv(batch=1)
    expected = _forward_and_grads(_attend("xla", SequenceParallel.GATHER, 1), q, k, v, w)
    for mode in (SequenceParallel.ULYSSES, SequenceParallel.RING):
        mesh = sharding.make_mesh(SEQ4_FSDP2)
        out, grads, _ = _forward_and_grads(_attend("xla", mode, 1), q, k, v, w, mesh)
        _assert_close((out, grads), expected[:2])


@pytest.mark.parametrize("groups", [1, 4])
def test_splash_under_ulysses_matches_xla(groups):
    """The splash kernel (Pallas interpreter) under Ulysses on sequence=4 x fsdp=2, bf16: within
    the kernel's own rounding of the fp32 xla reference, forward and gradients (the bounds of
    test_attention.test_splash_interpret_matches_xla and _gradients_match_xla)."""
    q, k, v, w = _qkv(length=512, heads=4, dim=64, dtype=jnp.bfloat16)
    mesh = sharding.make_mesh(SEQ4_FSDP2)
    splash = _attend("splash", SequenceParallel.ULYSSES, groups, interpret=True)
    out, grads, collectives = _forward_and_grads(splash, q, k, v, w, mesh)
    assert collectives == ({"all-to-all"} if groups == 1 else set())
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    reference = _attend("xla", SequenceParallel.GATHER, groups)
    expected, expected_grads, _ = _forward_and_grads(reference, *f32, w)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=BF16_U, atol=1e-5)
    # The bound is per softmax: per (example, group), the groups split into the batch axis.
    by_group = lambda *xs: [attention._split_groups(x, groups) for x in xs]
    _assert_grads_within_rounding(
        by_group(*grads), by_group(*expected_grads), *by_group(q, k, v, w)
    )


def test_ulysses_refuses_heads_the_sequence_axis_does_not_divide():
    q, k, v, _ = _qkv(heads=6)
    mesh = sharding.make_mesh(SEQ4_FSDP2)
    with sharding.use_mesh(mesh), pytest.raises(ValueError, match=r"model\.num_heads.*'ring'"):
        _attend("xla", SequenceParallel.ULYSSES, 1)(q, k, v)


def test_ring_refuses_the_kernel_backends():
    with pytest.raises(ValueError, match=r"'ring' runs on the .*'xla'.*not 'splash'"):
        dit_lib.DiTConfig.tiny(sequence_parallel="ring", attention_backend="splash")
    with pytest.raises(ValueError, match="sequence_parallel 'scatter' not in"):
        dit_lib.DiTConfig.tiny(sequence_parallel="scatter")


@pytest.mark.parametrize("subregion_major", [False, True])
def test_token_order_round_trips_and_keeps_subregions_contiguous(subregion_major):
    """Latent -> patches -> latent is the identity in both token orders; subregion-major tokens
    hold the map's 2 x 2 subregions as consecutive quarters (F, R, L, B)."""
    patch = (1, 2, 2)
    x = jnp.arange(2 * 3 * 8 * 12 * 1, dtype=jnp.float32).reshape(2, 3, 8, 12, 1)
    patches = dit_lib.patches_of(x, patch, subregion_major)
    tokens = patches.reshape(*patches.shape[:2], -1)
    np.testing.assert_array_equal(dit_lib.latent_of(tokens, (3, 4, 6), patch, subregion_major), x)
    if subregion_major:
        quarters = tokens.reshape(2, 4, -1)
        for index, (rows, cols) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            sub = x[:, :, rows * 4 : rows * 4 + 4, cols * 6 : cols * 6 + 6]
            np.testing.assert_array_equal(
                np.sort(quarters[:, index], -1), np.sort(sub.reshape(2, -1), -1)
            )


def test_train_step_with_sequence_4_equals_single_device():
    """Two steps of the real train step (`loop.make_trainer`, tiny micro config with 4 heads:
    5 frames x 4 x 4 tokens, one subregion per device; remat "full") on sequence=4 x fsdp=2 equal the same
    steps on one device: losses and updated parameters (fp32; tolerances of
    test_train.test_sharded_step_equals_single_device)."""
    config = micro_config()
    config.model.num_heads = 4
    config.model.sequence_parallel = "ulysses"  # ring: the attention tests above
    config.model.remat_policy = "full"  # the all-to-alls inside a rematerialised scan body
    validate_config(config, num_devices=1)
    it = pipeline.make_train_iterator(config.data, data_source=procedural_records())
    batches = [next(it), next(it)]
    single = sharding.make_mesh(dict(data=1, fsdp=1, sequence=1, tensor=1), jax.devices()[:1])
    losses_1, params_1 = _two_steps(config, single, batches)
    losses_8, params_8 = _two_steps(config, sharding.make_mesh(SEQ4_FSDP2), batches)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_sampling_with_ulysses_over_sequence_equals_one_device(tmp_path):
    """The compiled sampler (3 Euler steps, guidance 3) of a DiT saved with sequence_parallel
    'ulysses' on sequence=2 x fsdp=4 gives one device's latents (there, with no sequence split,
    attention is the gather path); tolerance of test_sample_sharded's sharded runs."""
    config = load_config(str(REPO / "configs" / "tiny.py:micro"))
    model_config = dataclasses.replace(build.dit_config(config), sequence_parallel="ulysses")
    model = nnx.jit(lambda: dit_lib.WanDiT(model_config, rngs=nnx.Rngs(0)))()
    checkpoint = dit_lib.save_dit(tmp_path / "dit", model)
    settings = denoising.SampleSettings(num_steps=3, scheduler="euler", guidance_scale=3.0, seed=1)
    latents = {}
    for name, mesh in (
        ("one", sampling_mesh(jax.devices()[:1])),
        ("split", sharding.make_mesh(dict(sequence=2, fsdp=4))),
    ):
        models = load_models(config, checkpoint, mesh=mesh, dtype="float32")
        assert models.model.config.sequence_parallel == "ulysses"
        latents[name] = generate(models, "a red door in the snow", settings).latents
    scale = np.abs(latents["one"]).max()
    np.testing.assert_allclose(latents["split"], latents["one"], rtol=0, atol=1e-5 * scale)


def test_sampling_mesh_refuses_ulysses_heads_it_cannot_split():
    model_config = dit_lib.DiTConfig.tiny(sequence_parallel="ulysses")  # 2 heads
    mesh = sharding.make_mesh(dict(sequence=4, fsdp=2))
    with pytest.raises(ValueError, match=r"2 attention heads over mesh\.sequence = 4"):
        denoising.check_mesh_fits(model_config, mesh)


def _config_for(preset: str, mode: str, sequence: int):
    config = micro_config()
    config.model.preset = preset
    for field in ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim"):
        config.model[field] = None  # the preset's
    config.model.sequence_parallel = mode
    config.mesh.update(dict(fsdp=1, sequence=sequence))
    return config


def test_config_refuses_ulysses_heads_the_mesh_cannot_split_naming_the_key():
    """Wan 1.3B's 12 heads over 8 sequence devices; 14B's 40 split, as do 1.3B's over 4."""
    with pytest.raises(ValueError, match=r"^config\.model\.sequence_parallel: .*12 attention"):
        validate_config(_config_for("wan_1_3b", "ulysses", 8), num_devices=8)
    validate_config(_config_for("wan_14b", "ulysses", 8), num_devices=8)
    config = _config_for("wan_1_3b", "ulysses", 4)
    config.mesh.fsdp = 2
    validate_config(config, num_devices=8)
    with pytest.raises(ValueError, match=r"^config\.model: sequence_parallel 'ring'"):
        config.model.attention_backend = "cudnn"
        config.model.sequence_parallel = "ring"
        validate_config(config, num_devices=8)


def test_ulysses_splash_train_step_compiles_for_a_tpu_with_a_sequence_axis():
    """The compile command's path (studies/tpu_compile.py) for 4 v5e chips, mesh sequence=4:
    the tiny train step with Ulysses and splash compiles, kernel included; the attention alone,
    compiled for the same chips, moves its tokens by all-to-alls and gathers nothing."""
    config = micro_config()
    config.model.num_heads = 4
    config.model.attention_backend = "splash"
    config.model.sequence_parallel = "ulysses"
    config.mesh.update(dict(fsdp=1, sequence=4))
    target = tpu_compile.parse_target("v5e-4")
    devices = tpu_compile.topology_devices(target)
    config, _ = tpu_compile.for_target(config, 1, target, "train")
    report = tpu_compile.compile_train(config, target, devices)
    assert report.what["mesh"] == "data=1 fsdp=1 sequence=4 tensor=1"
    assert report.what["attention"] == "splash, ulysses over the sequence axis"
    assert report.programs[0].pallas_calls > 0

    mesh = sharding.make_mesh(dict(sequence=4), devices)
    spec = sharding.named_sharding(mesh, attention.HEADS_AXES, (1, 1024, 8, 128))
    x = jax.ShapeDtypeStruct((1, 1024, 8, 128), jnp.bfloat16, sharding=spec)
    with sharding.use_mesh(mesh):
        attend = _attend("splash", SequenceParallel.ULYSSES, 1)
        text = jax.jit(attend).lower(x, x, x).compile().as_text()
    assert 'custom_call_target="tpu_custom_call"' in text
    assert set(_COLLECTIVE.findall(text)) == {"all-to-all"}
