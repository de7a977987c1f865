"""Tests for jaxdd.config: loading config files from anywhere, validation, the fingerprint."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from absl import flags

from configs import smoke
from jaxdd import build
from jaxdd import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_load_applies_overrides_as_the_cli_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Not the repository: `configs` resolves from the file.
    config = config_lib.load(
        REPO / "configs" / "smoke.py", "num_iterations=7", "robust.risk=max", "robust.alpha=0.25"
    )
    assert (config.num_iterations, config.robust.risk, config.robust.alpha) == (7, "max", 0.25)
    assert config.ipc == smoke.get_config().ipc
    config.ipc = 3  # Fields stay settable, as a get_config() result.


def test_a_configs_folder_elsewhere_imports_its_own_default(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "default.py").write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    return ml_collections.ConfigDict({'ipc': 7})\n"
    )
    (folder / "mine.py").write_text(
        "from configs import default\n\n\ndef get_config():\n    return default.get_config()\n"
    )
    before = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "configs"}
    assert config_lib.load(folder / "mine.py").ipc == 7  # This folder's default, not the repo's.
    after = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "configs"}
    assert after == before  # The repository's `configs` modules are put back.


def test_a_missing_config_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a path such as"):
        config_lib.load(tmp_path / "nope.py")


def test_installed_copy_loads_configs_from_another_directory(tmp_path):
    """jaxdd installed non-editable (a copy on PYTHONPATH, no configs beside it), run elsewhere."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "jaxdd", site / "jaxdd", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    code = (
        "import jaxdd; print(jaxdd.__file__); "
        f"print(jaxdd.load_config({str(REPO / 'configs' / 'svhn.py')!r}, 'ipc=3').ipc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, ipc = proc.stdout.split()
    assert where.startswith(str(site)) and ipc == "3"
    # Without a checkout beside it there is no default config: a clear usage error.
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdd.main"], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "pass --config=" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ipc", 0, "config.ipc=0"),
        ("robust.alpha", 0.0, "tail mass in \\(0, 1\\]"),
        ("robust.risk", "median", "config.robust.risk"),
        ("match.family", "trajectory", "config.match.family"),
        ("model.name", "vit", "config.model.name"),
        ("data.name", "imagenet", "config.data.name"),
        ("cluster.num_clusters", 0, "config.cluster.num_clusters"),
        ("match.augment", "color_warp", "config.match.augment"),
        ("eval.num_models", 0, "config.eval.num_models"),
        ("syn.init", "kmeans", "config.syn.init"),
        ("match.unroll_remat", "sqrt", "config.match.unroll_remat"),
        ("distributed.num_devices", -1, "config.distributed.num_devices"),
        ("distributed.process_id", 1, "below distributed.num_processes=1"),
        ("match.outer_loop", 0, "-1 \\(as DC\\) or an integer >= 1"),
        ("match.inner_loop", -2, "config.match.inner_loop=-2"),
        ("model.stem_pad", -3, "config.model.stem_pad=-3"),
        ("model.init", "xavier", "config.model.init"),
        ("num_iterations", 0, "config.num_iterations=0"),
        ("data.spurious", "texture", "config.data.spurious"),
        ("data.conflict_fraction", 0.5, "config.data.conflict_fraction=0.5 .* \\(0, 0.5\\)"),
        ("data.rare_fraction", 0.0, "config.data.rare_fraction=0.0"),
        ("cluster.assign", "dbscan", "config.cluster.assign"),
        ("cluster.pool", 0, "config.cluster.pool=0"),
        ("match.net_train", "real_data", "config.match.net_train"),
        ("match.net_cutmix", 1.5, "config.match.net_cutmix=1.5 .* probability"),
        ("match.net_momentum", 1.0, "config.match.net_momentum=1.0 .* momentum in \\[0, 1\\)"),
        ("match.net_weight_decay", -1e-4, "config.match.net_weight_decay=-0.0001"),
        ("match.net_data", 0, "config.match.net_data=0"),
        ("eval.cutmix", 1.5, "config.eval.cutmix=1.5 .* probability"),
        ("eval.cutmix_beta", 0.0, "config.eval.cutmix_beta"),
        ("eval.lr_schedule", "cosine", "config.eval.lr_schedule"),
        ("eval.augment_mode", "both", "config.eval.augment_mode"),
        ("eval.optimizer", "lamb", "eval.optimizer='lamb' .* \\['adam', 'sgd'\\]"),
        ("eval.loss", "hinge", "config.eval.loss='hinge'"),
        ("eval.network", "resnet", "config.eval.network='resnet'"),
        ("match.net_train", "real_robust", "unless cluster.assign='voronoi'"),
        ("syn.param", "latent", "config.syn.param"),
        ("match.unroll_optimizer", "rmsprop", "config.match.unroll_optimizer"),
        ("syn.optimizer", "rmsprop", "syn.optimizer='rmsprop' .* \\['adam', 'lamb', 'sgd'\\]"),
        ("match.net_optimizer", "lamb", "match.net_optimizer='lamb' .* \\['adam', 'sgd'\\]"),
        ("match.unroll_window", 99, "at most match.unroll_steps"),
        ("syn.label_lr", 0.0, "config.syn.label_lr=0.0"),
        ("syn.factor", 2, "config.syn.factor=2 .* 1 with syn.param='pixels'"),
        ("syn.init", "mix", "config.syn.init='mix' .* \\(mix tiles factorized sets\\)"),
    ],
)
def test_validation_names_the_field(field, value, message):
    config = smoke.get_config()
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_adam_network_optimizer_refuses_an_sgd_momentum():
    config = smoke.get_config()
    config.match.net_optimizer = "adam"
    config_lib.validate(config)  # Momentum 0, the default: nothing to ignore.
    config.match.net_momentum = 0.9  # As the idc method sets it.
    with pytest.raises(ValueError, match="net_momentum=0.9 .* 0 with match.net_optimizer='adam'"):
        config_lib.validate(config)


def test_adam_evaluation_refuses_an_sgd_momentum():
    config = smoke.get_config()
    config.eval.optimizer = "adam"
    with pytest.raises(ValueError, match="eval.momentum=0.9 .* 0 with eval.optimizer='adam'"):
        config_lib.validate(config)
    config.eval.momentum = 0.0
    config_lib.validate(config)


@pytest.mark.parametrize(
    "name, num_images, epochs, augment",
    [
        ("fashion_mnist.py", 10, 1000, "color_crop_cutout_scale_rotate"),
        ("fashion_mnist.py", 100, 2000, "color_crop_cutout_scale_rotate"),
        ("cifar10.py", 1000, 5000, "color_crop_cutout_scale_rotate_flip"),  # 10,000 steps of 2.
    ],
)
def test_frepo_evaluation_is_frepos_protocol(name, num_images, epochs, augment):
    config = config_lib.frepo_evaluation(config_lib.load(REPO / "configs" / name), num_images)
    config_lib.validate(config)
    evaluation = config.eval
    assert (evaluation.optimizer, evaluation.loss, evaluation.network) == ("adam", "mse", "frepo")
    assert (evaluation.lr, evaluation.momentum, evaluation.weight_decay) == (3e-4, 0.0, 0.0)
    assert (evaluation.lr_schedule, evaluation.batch_size, evaluation.cutmix) == ("frepo", 500, 0)
    assert (evaluation.epochs, evaluation.augment) == (epochs, augment)
    model = build.create_eval_model(config, 10, (28, 28, 1))
    assert (model.growth, model.norm, model.init_scheme, model.stem_pad) == (
        2, "none", "lecun", 2
    )  # fmt: skip
    # The distillation network, and a cross-architecture one, are not FRePo's.
    assert build.create_model(config, 10, (28, 28, 1)).norm == "instance"
    assert build.create_eval_model(config, 10, (28, 28, 1), "convnet").growth == 1
    with pytest.raises(ValueError, match="no step count for 30 images"):
        config_lib.frepo_evaluation(config, 30)


def test_real_network_training_needs_a_family_that_trains_its_network():
    config = smoke.get_config()
    config.match.net_train = "real"
    config_lib.validate(config)  # The gradient family trains it.
    config.match.family = "distribution"
    with pytest.raises(ValueError, match="match.family='distribution', whose network is never"):
        config_lib.validate(config)


@pytest.mark.parametrize(
    "old, new",
    [
        ("num_steps", "num_iterations"),
        ("log.every_steps", "log.every"),
        ("match.net_reset_every", "match.outer_loop"),
        ("match.net_train_steps", "match.inner_loop"),
    ],
)
def test_a_field_of_the_old_schedule_names_its_replacement(old, new):
    config = smoke.get_config()  # Unlocked, as a user's get_config() result: fields can be added.
    section, _, key = old.rpartition(".")
    (config[section] if section else config)[key] = 3
    with pytest.raises(ValueError, match=f"config.{old} no longer exists; use config.{new}"):
        config_lib.validate(config)


@pytest.mark.parametrize("ipc, loops", [(1, (1, 1)), (10, (10, 50)), (50, (50, 10))])
def test_gradient_matching_takes_dcs_get_loops(ipc, loops):
    config = config_lib.load(REPO / "configs" / "fashion_mnist.py", f"ipc={ipc}")
    config_lib.validate(config)
    assert build.loops(config) == loops
    config.match.inner_loop = 7  # An explicit value wins; the other keeps DC's.
    assert build.loops(config) == (loops[0], 7)


def test_an_ipc_without_dcs_loops_asks_for_them():
    config = config_lib.load(REPO / "configs" / "digits.py", "ipc=3")
    with pytest.raises(ValueError, match="defined for ipc in \\[1, 10, 20, 30, 40, 50\\]"):
        config_lib.validate(config)
    config.match.outer_loop, config.match.inner_loop = 3, 20
    config_lib.validate(config)
    assert build.loops(config) == (3, 20)


def test_methods_take_their_papers_settings():
    dsa = config_lib.load(REPO / "configs" / "fashion_mnist.py")
    dc = config_lib.load(REPO / "configs" / "fashion_mnist.py:dc")
    dm = config_lib.load(REPO / "configs" / "fashion_mnist.py:dm")
    assert (dsa.syn.lr, dsa.match.net_lr, dsa.num_iterations, dsa.eval.epochs) == (
        0.1, 0.01, 1000, 1000
    )  # fmt: skip
    assert dsa.match.augment == dsa.eval.augment == "color_crop_cutout_flip_scale_rotate"
    assert (dc.match.augment, dc.eval.augment, dc.eval.epochs) == ("none", "none", 300)
    assert (dm.match.family, dm.syn.lr, dm.num_iterations) == ("distribution", 1.0, 20000)
    assert build.loops(dm) == (1, 0)  # A fresh random network for every update.
    idc = config_lib.load(REPO / "configs" / "fashion_mnist.py:idc")
    assert (idc.syn.param, idc.syn.factor, idc.syn.init) == ("factorized", 2, "mix")
    assert idc.syn.clip_pixels and not dsa.syn.clip_pixels  # IDC clamps once per iteration.
    assert (idc.match.net_train, build.loops(idc), idc.match.inner_batch) == ("real", (100, 1), 64)
    assert idc.cluster.num_clusters * idc.match.num_real == 64  # IDC's batch_real per class.
    assert (idc.match.net_momentum, idc.match.net_weight_decay, idc.match.net_cutmix) == (
        0.9, 5e-4, 0.5
    )  # fmt: skip
    assert (idc.eval.augment_mode, idc.eval.lr_schedule, idc.eval.cutmix) == ("idc", "idc", 0.5)
    assert (idc.eval.batch_size, idc.eval.epochs) == (64, 1000)
    assert "cutout" not in idc.eval.augment  # IDC drops cutout when it mixes.
    # IDC's matching: DiffAug color_crop_cutout, l1 on the conv kernels, lr_img 1e-4 in [0, 1]
    # pixels = 1e-4 / std^2 on standardised images; its network trains without cutout.
    assert (idc.match.augment, idc.match.augment_mode) == ("color_crop_cutout", "idc")
    assert (idc.match.distance, idc.match.distance_layers) == ("l1", "conv")
    assert idc.syn.lr == pytest.approx(1e-4 / 0.3530**2)
    assert build.net_strategy(idc) == "color_crop"
    assert build.net_strategy(dsa) == dsa.match.augment  # DC's network keeps every family.
    svhn_idc = config_lib.load(REPO / "configs" / "svhn.py:idc")
    assert svhn_idc.match.distance == "mse" and svhn_idc.syn.lr == pytest.approx(5e-3 / 0.1987**2)
    digits_dc = config_lib.load(REPO / "configs" / "digits.py:dc")
    assert digits_dc.match.augment == "none"  # Dropping flips keeps 'none'.
    with pytest.raises(flags.IllegalFlagValueError, match="unknown method 'mtt'"):
        config_lib.load(REPO / "configs" / "digits.py:mtt")


def test_distribution_matching_refuses_a_trained_network():
    config = config_lib.load(REPO / "configs" / "digits.py:dm", "match.inner_loop=5")
    with pytest.raises(ValueError, match="fresh random network for every update"):
        config_lib.validate(config)


def test_idc_distances_serve_the_gradient_family_only():
    config = config_lib.load(REPO / "configs" / "digits.py:dm", "match.distance=l1")
    with pytest.raises(ValueError, match="config.match.distance='l1' .* 'dc' with match.family"):
        config_lib.validate(config)
    config = config_lib.load(REPO / "configs" / "digits.py", "match.distance=cosine")
    with pytest.raises(ValueError, match="match.distance"):
        config_lib.validate(config)
    config = config_lib.load(REPO / "configs" / "digits.py", "match.augment_mode=double")
    with pytest.raises(ValueError, match="match.augment_mode"):
        config_lib.validate(config)


def test_spurious_and_rare_benchmarks_are_exclusive():
    config = smoke.get_config()
    config.data.rare, config.data.spurious = "invert", "color"
    with pytest.raises(ValueError, match="config.data.spurious='color' .* data.rare='invert'"):
        config_lib.validate(config)


def test_reference_mode_config_is_valid_and_needs_the_gradient_family():
    config = config_lib.load(config_lib.REPO_CONFIGS / "rdd_reference.py:smoke")
    config_lib.validate(config)
    assert (config.cluster.assign, config.match.net_train) == ("voronoi", "real_robust")
    assert config.robust.risk == "mean" and config.ipc == smoke.get_config().ipc
    config.match.family = "distribution"
    with pytest.raises(ValueError, match="whose network is never trained"):
        config_lib.validate(config)


def test_factor_must_divide_the_image_size():
    config = smoke.get_config()
    config.syn.param, config.syn.factor = "factorized", 3
    config_lib.validate(config)
    dataset, _ = build.load_data(config)
    with pytest.raises(ValueError, match="syn.factor=3 must divide the image size 8x8"):
        config_lib.validate_against_data(config, dataset)


def test_learned_labels_need_a_family_that_depends_on_them():
    config = smoke.get_config()
    config.syn.learn_labels, config.match.family = True, "distribution"
    with pytest.raises(ValueError, match="does not depend on the labels"):
        config_lib.validate(config)
