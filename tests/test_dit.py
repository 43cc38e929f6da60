"""WanDiT: Pano and subregion attention, scanning, remat, sizes, sharding annotations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import viewpoint_jax  # noqa: F401  (flax config)
from viewpoint_jax.common import sharding
from viewpoint_jax.models import dit as dit_lib
from viewpoint_jax.models import rope, weights
from viewpoint_jax.models.dit import DiTConfig, WanDiT


def _inputs(config, batch=2, frames=2, size=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, frames, size, size, config.in_dim)).astype(np.float32)
    t = rng.uniform(0, 1000, (batch,)).astype(np.float32)
    ctx = rng.standard_normal((batch, 5, config.text_dim)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)


def _random_params(model, seed=0):
    """Fills a (possibly abstract) model with numpy random values: fast (no per-op compiles) and
    with non-trivial norms, biases and modulation tables, unlike the default init."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        name, shape = "/".join(map(str, path)), var.get_value().shape
        value = rng.standard_normal(shape)
        if "norm" in name and name.endswith("scale"):
            value = 1 + 0.2 * value
        elif name.endswith("bias"):
            value = 0.1 * value
        elif "modulation" in name:
            value = value / np.sqrt(shape[-1])
        else:  # kernels (..., in, out)
            fan_in = np.prod(shape[-4:-1]) if name == "patch_kernel" else shape[-2]
            value = value / np.sqrt(fan_in)
        var.set_value(jnp.asarray(value, var.get_value().dtype))
    nnx.update(model, state)
    return model


def _model(**overrides):
    return _random_params(dit_lib.abstract_model(DiTConfig.tiny(**overrides)))


def _with_config(model, **changes):
    """A model with the same parameters under a config with other execution options."""
    config = dataclasses.replace(model.config, **changes)
    clone = nnx.eval_shape(lambda: WanDiT(config, rngs=nnx.Rngs(0)))
    nnx.update(clone, nnx.state(model, nnx.Param))
    return clone


@nnx.jit
def _forward(model, x, t, ctx):
    return model(x, t, ctx)


def test_subregion_model_is_plain_model_per_subregion():
    pano = _model(attention_pattern="pano")
    subregion = _with_config(pano, attention_pattern="subregion")
    x, t, ctx = _inputs(pano.config, size=8)
    out = _forward(subregion, x, t, ctx)
    for rows in (slice(0, 4), slice(4, 8)):
        for cols in (slice(0, 4), slice(4, 8)):
            alone = _forward(pano, x[:, :, rows, cols], t, ctx)
            np.testing.assert_allclose(out[:, :, rows, cols], alone, atol=2e-5, rtol=1e-5)


def _unscanned(model, x, t, ctx):
    """Reference forward: a Python loop over the blocks in `block_kinds`, no scan or grouping."""
    config = model.config
    calls = []
    original = dit_lib.WanDiT._run_blocks

    def run_blocks(self, tokens, e, c, ropes):
        graphdef, params = nnx.split(self.blocks, nnx.Param)
        for i, kind in enumerate(config.block_kinds):
            block = nnx.merge(graphdef, jax.tree.map(lambda p, i=i: p[i], params))
            tokens = block(tokens, e, c, ropes, kind)
            calls.append(kind)
        return tokens

    dit_lib.WanDiT._run_blocks = run_blocks
    try:
        return nnx.jit(lambda m: m(x, t, ctx))(model), calls
    finally:
        dit_lib.WanDiT._run_blocks = original


@pytest.mark.parametrize(
    "pattern,period",
    [("alternate", 2)],
)
def test_scan_matches_unscanned_loop(pattern, period):
    model = _model(num_layers=4, attention_pattern=pattern)
    assert len(model.config.scan_group) == period
    x, t, ctx = _inputs(model.config)
    expected, kinds = _unscanned(model, x, t, ctx)
    assert tuple(kinds) == model.config.block_kinds
    np.testing.assert_allclose(_forward(model, x, t, ctx), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["none", "full", "save_dots"])
def test_remat_policy_wraps_each_scan_step(policy):
    model = _model(num_layers=2)
    x, t, ctx = _inputs(model.config, batch=1, frames=1)
    graphdef, params = nnx.split(_with_config(model, remat_policy=policy), nnx.Param)
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(x, t, ctx))(params)
    (scan,) = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
    assert scan.params["length"] == 1  # one (pano, subregion) pair per step
    body = scan.params["jaxpr"].jaxpr
    remats = [
        eqn
        for eqn in body.eqns
        if "checkpoint" in eqn.primitive.name or "remat" in eqn.primitive.name
    ]
    if policy == "none":
        assert not remats
    else:
        (remat,) = remats
        assert remat.params["policy"] is dit_lib.REMAT_POLICIES[policy]


def test_bfloat16_compute_close_to_float32():
    model = _model()
    x, t, ctx = _inputs(model.config, frames=1)
    ref = _forward(model, x, t, ctx)
    bf16 = _with_config(model, dtype="bfloat16")
    assert bf16.text_in.dtype == jnp.bfloat16
    out = _forward(bf16, x, t, ctx)
    assert np.abs(np.asarray(out, np.float32) - ref).max() < 0.05 * np.abs(ref).max()


def test_bad_sizes_raise_clear_errors():
    model = _model()
    x, t, ctx = _inputs(model.config, size=6)  # token grid 3x3: no 2x2 subregions
    with pytest.raises(ValueError, match="even token grid"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match="attention_pattern"):
        DiTConfig.tiny(attention_pattern="diagonal")
    with pytest.raises(ValueError, match="attention_backend"):
        DiTConfig.tiny(attention_backend="flash")


def test_config_round_trip():
    assert DiTConfig.tiny(num_layers=4).block_kinds == ("pano", "subregion") * 2
    assert DiTConfig.tiny(num_layers=4, attention_pattern="pano").scan_group == ("pano",)
    pattern = ("pano", "subregion", "subregion", "pano") * 2
    assert DiTConfig.tiny(num_layers=8, attention_pattern=pattern).scan_group == pattern[:4]
    config = DiTConfig.tiny(attention_pattern=("pano", "subregion"), in_dim=33)
    assert DiTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown DiTConfig fields"):
        DiTConfig.from_dict({**config.to_dict(), "depth": 3})


def _reference_count(**kwargs):
    import torch
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "preset,heads,head_dim,ffn,layers",
    [("wan_1_3b", 12, 128, 8960, 30), ("wan_14b", 40, 128, 13824, 40)],
)
def test_parameter_count_matches_diffusers(preset, heads, head_dim, ffn, layers):
    config = getattr(DiTConfig, preset)()
    count = dit_lib.count_params(nnx.state(dit_lib.abstract_model(config), nnx.Param))
    expected = _reference_count(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        ffn_dim=ffn,
        num_layers=layers,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
    )
    assert count == expected


def test_every_param_is_annotated_and_sharded_forward_matches():
    model = _model()
    params = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.get_value().ndim, path

    mesh = sharding.make_mesh({"fsdp": 2, "sequence": 2, "tensor": 2})
    x, t, ctx = _inputs(model.config)
    expected = _forward(model, x, t, ctx)
    graphdef, state = nnx.split(model)
    shardings = sharding.state_shardings(state, mesh)
    state = jax.device_put(state, shardings)

    @jax.jit
    def forward(state, x, t, ctx):
        return nnx.merge(graphdef, state)(x, t, ctx)

    with sharding.use_mesh(mesh):
        out = forward(state, x, t, ctx)
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-5)


# RoPE and the forward pass on a token grid with frames, height and width all different ---------

# Latent (F, H, W) = (3, 8, 12) with patch (1, 2, 2): tokens 3 x 4 x 6, so a mix-up of any two
# axes (positions or frequency bands) changes the result.
_UNEVEN_LATENT = (3, 8, 12)
_UNEVEN_GRID = (3, 4, 6)


@pytest.mark.parametrize("head_dim", [128, 24])  # Wan's (bands 44, 42, 42), the tiny (8, 8, 8)
def test_rope_matches_diffusers_on_an_uneven_grid(head_dim):
    import torch
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    reference = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=1024)
    with torch.no_grad():
        # diffusers: (1, L, 1, head_dim) tables, each pair's angle repeated (repeat_interleave).
        cos_ref, sin_ref = reference(torch.zeros(1, 1, *_UNEVEN_LATENT))
    cos_ref, sin_ref = cos_ref[0, :, 0].numpy(), sin_ref[0, :, 0].numpy()
    cos, sin = rope.rope_tables(_UNEVEN_GRID, head_dim)
    assert cos.shape == (np.prod(_UNEVEN_GRID), head_dim // 2)
    for half in (0, 1):
        np.testing.assert_allclose(cos, cos_ref[:, half::2], atol=1e-6)
        np.testing.assert_allclose(sin, sin_ref[:, half::2], atol=1e-6)

    # The rotated queries: ours against diffusers' apply_rotary_emb (WanAttnProcessor).
    q = np.random.default_rng(0).standard_normal((2, len(cos), 3, head_dim)).astype(np.float32)
    got = np.asarray(rope.apply_rope(jnp.asarray(q), jnp.asarray(cos), jnp.asarray(sin)))
    x = torch.from_numpy(q)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = (
        torch.from_numpy(cos_ref)[None, :, None, 0::2],
        torch.from_numpy(sin_ref)[None, :, None, 1::2],
    )
    want = torch.empty_like(x)
    want[..., 0::2] = x1 * c - x2 * s
    want[..., 1::2] = x1 * s + x2 * c
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-5)


def test_forward_matches_diffusers_on_an_uneven_grid(tmp_path):
    """The whole (pano) model against diffusers' WanTransformer3DModel with the same weights
    (converted through convert_dit) on a latent whose token grid is 3 x 4 x 6."""
    import torch
    from diffusers import WanTransformer3DModel
    from test_convert_dit import _jax_forward
    from wan_release import DIT_TINY as TINY
    from wan_release import save_dit

    from viewpoint_jax.convert import dit as convert_dit_lib

    torch.manual_seed(1)
    reference = WanTransformer3DModel(**TINY).eval()
    with torch.no_grad():  # non-trivial norms (the defaults are ones and zeros)
        for name, p in reference.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, TINY["in_channels"], *_UNEVEN_LATENT)).astype(np.float32)
    t = np.array([400.0], np.float32)
    ctx = rng.standard_normal((1, 7, TINY["text_dim"])).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx))
    expected = expected.sample.numpy()
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    config = {"_class_name": "WanTransformer3DModel", **TINY, "image_dim": None}
    save_dit(state, tmp_path / "src", "safetensors", config)
    convert_dit_lib.convert_dit(tmp_path / "src", tmp_path / "dst", attention_pattern="pano")
    got = _jax_forward(dit_lib.load_dit(tmp_path / "dst"), x, t, ctx)
    assert got.shape == expected.shape
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    assert rel < 2e-6, f"max abs error relative to output scale: {rel:.2e}"


def test_save_dit_writes_the_converted_layout_and_loads_back(tmp_path):
    model = _model(in_dim=16)
    path = dit_lib.save_dit(tmp_path / "dit", model, extra_files={"README.md": "a note"})
    # The tree the converters write (`param_targets`): same paths, shapes and dtypes.
    targets = weights.param_targets(dit_lib.abstract_model(model.config))
    saved = weights.leaf_shapes(weights.saved_tree(path / "params"))
    assert saved == {name: target.shape for name, target in targets.items()}
    loaded = dit_lib.load_dit(path)
    assert loaded.config == model.config
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(loaded, nnx.Param), nnx.state(model, nnx.Param)
    )
    assert (path / "README.md").read_text() == "a note"
    with pytest.raises(FileExistsError, match="already exists"):
        dit_lib.save_dit(path, model)


def test_clean_prediction_returns_the_velocity_of_its_clean_latent():
    """prediction="clean": the head's output (what the same weights return as a velocity model)
    is the clean latent; the model returns (x_s - x) / s, so x_s - s v gives it back, with s
    held at CLEAN_MIN_SIGMA below it."""
    head = _model(in_dim=10, out_dim=4)
    clean_model = _with_config(head, prediction="clean")
    x, _, ctx = _inputs(head.config)
    t = jnp.asarray([600.0, 10.0])  # s = 0.6, and s = 0.01 below the floor
    clean = _forward(head, x, t, ctx)
    velocity = _forward(clean_model, x, t, ctx)
    sigma = np.maximum(np.asarray(t) / 1000, dit_lib.CLEAN_MIN_SIGMA)[:, None, None, None, None]
    noisy = np.asarray(x[..., :4])
    np.testing.assert_allclose(noisy - sigma * velocity, clean, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        DiTConfig.tiny(prediction="noise")
