"""Tests for jaxdd.models: shapes, purity (no batch statistics), gradients, pluggable conv, CE."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import conv, models

NUM_CLASSES = 5
# Tiny widths keep compilation cheap; the architectures are otherwise the full ones.
SMALL = {
    "convnet": {"width": 4},
    "mlp": {"width": 8},
    "resnet18": {"width": 2},
    "vgg11": {"width": 4},
}
SHAPES = [(2, 8, 8, 1), (2, 16, 16, 3)]


def _random_variables(model, image_shape, seed=0):
    """Variables with `model.init`'s tree, filled host-side with NumPy.

    Avoids compiling flax's initialisers (tens of seconds for ResNet-18 on a busy 2-core CPU);
    `init_params` itself is tested once, on a small model.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if len(leaf.shape) >= 2:  # kernels: LeCun-normal scale
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(size=leaf.shape).astype(np.float32) / np.sqrt(fan_in)
        if path[-1].key == "scale":
            return (1.0 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def _compiled(name: str, shape: tuple[int, ...]):
    """(variables, f) where f(params, x) -> (logits, embedding, d_params, d_images), jitted."""
    model = models.instantiate(name, num_classes=NUM_CLASSES, **SMALL[name])
    variables = _random_variables(model, shape[1:])

    def loss(params, x):
        logits, embedding = model.apply({"params": params}, x)
        # Arbitrary fixed weights so no gradient vanishes by symmetry (e.g. softmax shift).
        w = jnp.arange(1.0, 1.0 + logits.size).reshape(logits.shape)
        return jnp.sum(jnp.sin(logits * w)) + jnp.sum(embedding**2), (logits, embedding)

    @jax.jit
    def f(params, x):
        (_, (logits, embedding)), (dp, dx) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
            params, x
        )
        return logits, embedding, dp, dx

    return variables, f


def _images(shape, seed=1):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_shapes_and_no_batch_stats(name, shape):
    variables, f = _compiled(name, shape)
    assert set(variables) == {"params"}  # no batch_stats or any other mutable collection
    logits, embedding, _, _ = f(variables["params"], _images(shape))
    assert logits.shape == (shape[0], NUM_CLASSES)
    assert embedding.ndim == 2 and embedding.shape[0] == shape[0]
    fc_in = variables["params"]["fc"]["kernel"].shape[0]
    assert embedding.shape[1] == fc_in  # the embedding is the input of the final Dense
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(embedding))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_gradients_wrt_images_and_params_finite_nonzero(name, shape):
    variables, f = _compiled(name, shape)
    _, _, dp, dx = f(variables["params"], _images(shape))
    assert dx.shape == shape
    assert np.all(np.isfinite(dx)) and np.any(dx != 0)
    for g in jax.tree.leaves(dp):
        assert np.all(np.isfinite(g))
    assert any(np.any(g != 0) for g in jax.tree.leaves(dp))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_per_example_independence(name, shape):
    """No batch-coupled normalisation: changing image 1 leaves image 0's outputs untouched."""
    variables, f = _compiled(name, shape)
    x = _images(shape)
    changed = x.at[1].set(_images(shape[1:], seed=7))
    logits_a, emb_a, _, dx_a = f(variables["params"], x)
    logits_b, emb_b, _, dx_b = f(variables["params"], changed)
    np.testing.assert_allclose(logits_a[0], logits_b[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(emb_a[0], emb_b[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx_a[0], dx_b[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits_a[1], logits_b[1])


def _param_shapes(model, image_shape):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    return jax.tree.map(lambda s: s.shape, variables)


def test_convnet_param_shapes_match_dc():
    width, depth = 6, 3
    shapes = _param_shapes(models.ConvNet(NUM_CLASSES, depth=depth, width=width), (16, 16, 3))
    assert set(shapes) == {"params"}
    params = shapes["params"]
    assert set(params) == {"conv0", "conv1", "conv2", "norm0", "norm1", "norm2", "fc"}
    for i in range(depth):
        cin = 3 if i == 0 else width
        assert params[f"conv{i}"] == {"kernel": (3, 3, cin, width), "bias": (width,)}
        assert params[f"norm{i}"] == {"scale": (width,), "bias": (width,)}
    # 16 -> 8 -> 4 -> 2 after three 2x2 pools: DC's feature size width * 2 * 2.
    assert params["fc"] == {"kernel": (width * 2 * 2, NUM_CLASSES), "bias": (NUM_CLASSES,)}


def test_convnet_variants_param_trees():
    plain = _param_shapes(models.ConvNet(3, width=4, norm="none", pooling="max"), (8, 8, 1))
    assert not any(k.startswith("norm") for k in plain["params"])
    group = _param_shapes(models.ConvNet(3, width=8, norm="group"), (8, 8, 1))
    assert group["params"]["norm0"] == {"scale": (8,), "bias": (8,)}
    # No pooling keeps the spatial size: embedding 8 * 8 * width.
    flat = _param_shapes(models.ConvNet(3, width=4, pooling="none"), (8, 8, 1))
    assert flat["params"]["fc"]["kernel"] == (8 * 8 * 4, 3)


def test_convnet_growth_widens_block_by_block_as_frepo():
    # FRePo's evaluation ConvNet (lib/models/networks.py 224): 128 * 2^i channels, no norm.
    shapes = _param_shapes(
        models.ConvNet(NUM_CLASSES, width=4, growth=2, norm="none", stem_pad=2), (28, 28, 1)
    )["params"]
    assert set(shapes) == {"conv0", "conv1", "conv2", "fc"}
    for i, (cin, cout) in enumerate([(1, 4), (4, 8), (8, 16)]):
        assert shapes[f"conv{i}"] == {"kernel": (3, 3, cin, cout), "bias": (cout,)}
    # 28 + 2 * 2 = 32 -> 16 -> 8 -> 4: a 4 * 4 * 16 embedding.
    assert shapes["fc"]["kernel"] == (4 * 4 * 16, NUM_CLASSES)
    with pytest.raises(ValueError, match="growth must be >= 1"):
        _param_shapes(models.ConvNet(NUM_CLASSES, width=4, growth=0), (8, 8, 1))


@pytest.mark.parametrize(
    "model, size, embed_dim",
    [
        # 8 -> 4 -> 2 -> 2 -> 2 -> 1: inner pools stop at 2x2, only the last reaches 1x1.
        (models.ConvNet(3, depth=5, width=4), 8, 4),
        (models.ConvNet(3, depth=3, width=4), 8, 4),
        (models.ConvNet(3, depth=3, width=4), 32, 4 * 4 * 4),  # DC: 32 -> 16 -> 8 -> 4
        (models.VGG11(3, width=8), 8, 64),  # ends at 1x1 with 512 * 8 / 64 channels
        (models.VGG11(3, width=8), 32, 64),  # DC: five pools, 32 -> 1
        (models.ResNet18(3, width=2), 8, 16),  # global average pool over 8 * width channels
    ],
    ids=["convnet-d5-8", "convnet-d3-8", "convnet-d3-32", "vgg11-8", "vgg11-32", "resnet18-8"],
)
def test_embedding_sizes_and_small_input_guards(model, size, embed_dim):
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, size, size, 1)))[0]
    )
    logits, embedding = out
    assert logits.shape == (2, 3)
    assert embedding.shape == (2, embed_dim)


class _EinsumConv(nn.Module):
    """A different 3x3 SAME conv implementation with nn.Conv's parameter tree."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kh, kw = self.kernel_size
        h, w = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        out = sum(
            jnp.einsum("nhwc,cd->nhwd", xp[:, i : i + h, j : j + w], kernel[i, j])
            for i in range(kh)
            for j in range(kw)
        )
        return out + bias


@pytest.mark.parametrize(
    "conv",
    [functools.partial(nn.Conv, precision=jax.lax.Precision.HIGHEST), _EinsumConv],
    ids=["partial", "einsum"],
)
def test_pluggable_conv_keeps_param_tree_and_function(conv):
    reference = models.ConvNet(NUM_CLASSES, depth=2, width=4)
    swapped = models.ConvNet(NUM_CLASSES, depth=2, width=4, conv=conv)
    image_shape = (8, 8, 2)
    ref_tree = jax.eval_shape(reference.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    new_tree = jax.eval_shape(swapped.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    assert jax.tree.structure(ref_tree) == jax.tree.structure(new_tree)
    assert jax.tree.map(lambda s: s.shape, ref_tree) == jax.tree.map(lambda s: s.shape, new_tree)
    params = _random_variables(reference, image_shape)["params"]
    x = _images((2, *image_shape))
    ref_out = jax.jit(reference.apply)({"params": params}, x)
    new_out = jax.jit(swapped.apply)({"params": params}, x)
    np.testing.assert_allclose(ref_out[0], new_out[0], rtol=1e-4, atol=1e-4)


def test_convnet_and_vgg_convolve_with_the_per_platform_same_conv():
    assert models.ConvNet(NUM_CLASSES).conv is conv.SameConv
    assert models.VGG11(NUM_CLASSES).conv is conv.SameConv


def test_init_params_returns_params_collection():
    model = models.instantiate("mlp", num_classes=3, width=4, depth=2)
    params = models.init_params(model, jax.random.key(0), (8, 8, 1))
    assert set(params) == {"dense0", "fc"}
    assert params["dense0"]["kernel"].shape == (64, 4)
    with pytest.raises(ValueError, match="H, W, C"):
        models.init_params(model, jax.random.key(0), (8, 8))


def test_instantiate_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="convnet.*mlp.*resnet18.*vgg11"):
        models.instantiate("alexnet", num_classes=10)


def test_invalid_norm_and_pooling_raise():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="norm"):
        jax.eval_shape(models.ConvNet(3, norm="batch").init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="pooling"):
        jax.eval_shape(models.ConvNet(3, pooling="sum").init, jax.random.key(0), x)
    # The message names the bad value and the allowed ones.
    with pytest.raises(ValueError, match=r"'sum'.*\['avg', 'max', 'none'\]"):
        jax.eval_shape(models.ConvNet(3, pooling="sum").init, jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"'batch'.*\['group', 'instance', 'none'\]"):
        jax.eval_shape(models.VGG11(3, norm="batch").init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="norm"):
        jax.eval_shape(models.ResNet18(3, norm="none").init, jax.random.key(0), x)


def _np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_cross_entropy_hard_labels_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)).astype(np.float32) * 5
    labels = rng.integers(0, 4, size=7)
    expected = -_np_log_softmax(logits)[np.arange(7), labels]
    got = models.cross_entropy(logits, labels)
    assert got.shape == (7,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_cross_entropy_soft_labels_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
    probs = rng.dirichlet(np.ones(5), size=6).astype(np.float32)
    expected = -(probs * _np_log_softmax(logits)).sum(axis=-1)
    got = jax.jit(models.cross_entropy)(logits, probs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # One-hot soft labels agree with integer labels.
    labels = rng.integers(0, 5, size=6)
    np.testing.assert_allclose(
        models.cross_entropy(logits, jax.nn.one_hot(labels, 5)),
        models.cross_entropy(logits, labels),
        rtol=1e-6,
        atol=1e-6,
    )


def test_cross_entropy_gradients():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    probs = jnp.asarray(rng.dirichlet(np.ones(4), size=3), jnp.float32)
    # d CE / d logits = softmax(logits) - p; d CE / d p = -log_softmax(logits).
    d_logits, d_probs = jax.grad(lambda z, p: models.cross_entropy(z, p).sum(), (0, 1))(
        logits, probs
    )
    np.testing.assert_allclose(d_logits, jax.nn.softmax(logits) - probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_probs, -_np_log_softmax(logits), rtol=1e-5, atol=1e-5)


def test_cross_entropy_rejects_mismatched_labels():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match="labels"):
        models.cross_entropy(logits, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="integers"):
        models.cross_entropy(logits, jnp.zeros((3,), jnp.float32))


def test_convnet_stem_pad_is_dcs_padding_3_first_conv_at_28x28():
    """DC's ConvNet on 1-channel 28x28: padding 3 in the first conv, maps 32 -> 16 -> 8 -> 4."""
    model = models.ConvNet(NUM_CLASSES, width=4, depth=3, stem_pad=2)
    params = _param_shapes(model, (28, 28, 1))["params"]
    assert params["fc"]["kernel"] == (4 * 4 * 4, NUM_CLASSES)  # DC: 2048 at width 128.
    assert _param_shapes(models.ConvNet(NUM_CLASSES, width=4), (28, 28, 1))["params"]["fc"][
        "kernel"
    ] == (3 * 3 * 4, NUM_CLASSES)  # SAME padding: 28 -> 14 -> 7 -> 3.
    # Same parameters: stem_pad=2 is the SAME conv of the 2-padded image, i.e. padding 3.
    variables = _random_variables(model, (28, 28, 1))
    x = _images((2, 28, 28, 1))
    conv0 = lambda y: jax.lax.conv_general_dilated(
        y, variables["params"]["conv0"]["kernel"], (1, 1), [(3, 3), (3, 3)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + variables["params"]["conv0"]["bias"]  # fmt: skip
    _, intermediates = model.apply(variables, x, capture_intermediates=True, mutable=True)
    first = intermediates["intermediates"]["conv0"]["__call__"][0]
    assert first.shape == (2, 32, 32, 4)
    np.testing.assert_allclose(first, conv0(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_torch_init_scheme_is_pytorchs_default(name):
    """kaiming-uniform(a=sqrt(5)) kernels and uniform biases, both U(+-1/sqrt(fan_in))."""
    model = models.instantiate(name, num_classes=NUM_CLASSES, width=64, depth=2)
    params = models.init_params(model, jax.random.key(0), (8, 8, 1))
    is_layer = lambda x: isinstance(x, dict) and "kernel" in x
    layers = [leaf for leaf in jax.tree.leaves(params, is_leaf=is_layer) if is_layer(leaf)]
    assert len(layers) == (3 if name == "convnet" else 2)
    for layer in layers:
        kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
        bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
        # Uniform on [-b, b]: variance b^2 / 3 (within sampling error of >= 4096 draws).
        if kernel.size >= 4096:
            np.testing.assert_allclose(kernel.var(), bound**2 / 3, rtol=0.1)
        assert np.abs(bias).max() > bound / 4  # Biases are drawn, not zero.
    lecun = models.instantiate(
        name, num_classes=NUM_CLASSES, width=64, depth=2, init_scheme="lecun"
    )
    lecun_params = models.init_params(lecun, jax.random.key(0), (8, 8, 1))
    assert not np.any(jax.tree.leaves(lecun_params["fc"])[0])  # flax: zero bias
    with pytest.raises(ValueError, match="init_scheme"):
        bad = models.instantiate(name, num_classes=NUM_CLASSES, init_scheme="xavier")
        models.init_params(bad, jax.random.key(0), (8, 8, 1))
