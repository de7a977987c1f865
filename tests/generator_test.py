"""syn.param=generator end to end on a tiny generator: latents learned, images = G(latents)."""

import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_generator
from tiny_generator import TinyGenerator

import jaxdd
from jaxdd import build, step, synthetic
from jaxdd import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    params = TinyGenerator().init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
    path = tmp_path_factory.mktemp("generator") / "tiny.msgpack"
    path.write_bytes(flax.serialization.to_bytes(params))
    return path


def _config(checkpoint, spec="tiny_generator:TinyGenerator", **fields):
    config = config_lib.load(CONFIGS / "smoke.py")
    config.syn.param, config.syn.init = "generator", "noise"
    config.syn.generator, config.syn.generator_checkpoint = spec, str(checkpoint)
    config.syn.latent_dim = 16
    config.num_iterations, config.eval.epochs, config.eval.select_every = 2, 2, 0
    for field, value in fields.items():
        section, key = field.split("__")
        config[section][key] = value
    return config


def test_a_run_learns_latents_whose_images_are_the_generators(checkpoint, tmp_path):
    config = _config(checkpoint)
    result = jaxdd.distill(config, tmp_path)
    with np.load(tmp_path / "synthetic.npz") as saved:
        latents, images = saved["stored"], saved["images"]
        assert str(saved["param"]) == "generator"
    assert latents.shape == (10, 2, 16) and images.shape == (20, 8, 8, 1)
    module, params = synthetic.load_generator(config.syn.generator, str(checkpoint), 16)
    np.testing.assert_allclose(
        images, module.apply({"params": params}, latents.reshape(20, 16)), atol=1e-5
    )
    # The run's initial state (run._set_up's keys): its latents moved, its images are G's.
    cluster_key, init_key, _ = jax.random.split(jax.random.key(config.seed), 3)
    dataset, _ = build.load_data(config)
    groups = build.create_groups(config, dataset, key=cluster_key)
    real = step.RealData(images=jnp.asarray(dataset.train.images), groups=groups)
    initial = build.create_state(config, real, key=init_key).images
    assert initial.shape == latents.shape and 0.5 < float(jnp.std(initial)) < 1.5
    assert not np.allclose(latents, initial)  # The latents were learned.
    assert np.isfinite(result.report["accuracy_mean"])


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("tiny_generator", ValueError, "expected 'package.module:Name'"),
        ("no_such_module:G", ValueError, "could not be built"),
        ("tiny_generator:Missing", ValueError, "could not be built"),
        ("tiny_generator:make_wide", ValueError, "does not hold"),  # Another module's weights.
    ],
)
def test_bad_generators_are_refused_before_any_work(checkpoint, tmp_path, spec, error, message):
    config = _config(checkpoint, spec=spec)
    with pytest.raises(error, match=message):
        jaxdd.distill(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # Nothing written.


def test_a_generator_of_other_images_is_refused(tmp_path):
    wide = tiny_generator.make_wide()
    path = tmp_path / "wide.msgpack"
    path.write_bytes(
        flax.serialization.to_bytes(wide.init(jax.random.key(0), jnp.zeros((1, 16)))["params"])
    )
    config = _config(path, spec="tiny_generator:make_wide")
    with pytest.raises(ValueError, match=r"makes \(8, 8, 3\) images .* \(8, 8, 1\)"):
        build.create_decoder(config, (8, 8, 1))


def test_missing_or_foreign_checkpoints_say_what_to_write(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="flax.serialization.to_bytes"):
        synthetic.load_generator("tiny_generator:TinyGenerator", str(tmp_path / "no"), 16)
    with pytest.raises(ValueError, match="does not hold"):
        synthetic.load_generator("tiny_generator:TinyGenerator", str(checkpoint), 8)


def test_generator_config_needs_its_module_checkpoint_latents_and_noise_init(checkpoint):
    for fields, message in [
        ({"syn__generator": ""}, "syn.generator .* set with it"),
        ({"syn__latent_dim": 0}, "latent size"),
        ({"syn__init": "real"}, "'noise' with a generator"),
        ({"syn__clip_pixels": True}, "syn.clip_pixels=True .* \\(the set is latents\\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            config_lib.validate(_config(checkpoint, **fields))
    decode, params = build.create_decoder(_config(checkpoint), (8, 8, 1))
    images, labels = decode(jnp.zeros((2, 3, 16)), jnp.zeros((2, 3), jnp.int32), params)
    assert images.shape == (2, 3, 8, 8, 1) and labels.shape == (2, 3)


def test_learned_generator_moves_with_the_latents_and_is_written(checkpoint, tmp_path):
    """GLaD's learn_g: G's parameters train with the latents at syn.generator_lr; the set's
    images are the learned G's, which generator.msgpack holds in syn.generator_checkpoint's
    format (so a later run can start from it)."""
    config = _config(checkpoint, syn__learn_generator=True, syn__generator_lr=0.1)
    jaxdd.distill(config, tmp_path)
    module, fixed = synthetic.load_generator(config.syn.generator, str(checkpoint), 16)
    learned = flax.serialization.from_bytes(fixed, (tmp_path / "generator.msgpack").read_bytes())
    assert any(
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(learned), strict=True)
    )
    with np.load(tmp_path / "synthetic.npz") as saved:
        latents, images = saved["stored"], saved["images"]
    assert latents.shape == (10, 2, 16)
    np.testing.assert_allclose(
        images, module.apply({"params": learned}, latents.reshape(20, 16)), atol=1e-5
    )
    # Its optimiser: G at syn.generator_lr, the latents at syn.lr, labels at syn.label_lr.
    config.syn.learn_labels = True
    stored = {"latents": jnp.ones((10, 2, 16)), "generator": fixed}
    trained = {"images": stored, "labels": jnp.zeros((10, 2, 10))}
    optimizer = build.create_syn_optimizer(config)
    grads = jax.tree.map(jnp.ones_like, trained)
    updates, _ = optimizer.update(grads, optimizer.init(trained), trained)
    assert float(updates["images"]["latents"][0, 0, 0]) == pytest.approx(-config.syn.lr)
    assert float(updates["labels"][0, 0, 0]) == pytest.approx(-config.syn.label_lr)
    assert float(jax.tree.leaves(updates["images"]["generator"])[0].ravel()[0]) == pytest.approx(
        -0.1
    )


def test_learn_generator_needs_a_generator():
    config = config_lib.load(CONFIGS / "smoke.py")
    config.syn.learn_generator = True
    with pytest.raises(ValueError, match="syn.learn_generator"):
        config_lib.validate(config)
