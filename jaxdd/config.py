"""Run configs: loading config files, validating every field, and the checkpoint fingerprint.

Configs are `ml_collections` files under `configs/` that import `configs.default` and override
what differs. `load(path)` (and the CLI's `--config` flag, `config_flag`) executes such a file
with the package `configs` resolved to the file's own directory, so a config loads from any
working directory and with jaxdd installed non-editable, without editing `sys.path`.

`validate` checks every value that can be checked without data and raises a `ValueError` that
names the field and what is expected; `validate_against_data` the fields that depend on the
data. `fingerprint` is what a checkpoint must agree on to be resumed. `frepo_evaluation` sets
another paper's evaluation protocol on a config (`jaxdd evaluate --protocol=frepo`).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import pathlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from jaxdd import augment, build, data, matching, models, retrain, risk, shifts, step, synthetic
from jaxdd import groups as groups_lib

# The repository's configs, when jaxdd runs from a checkout (editable install).
REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
_PACKAGE = "configs"


@contextlib.contextmanager
def configs_package(config_file: str | pathlib.Path) -> Iterator[None]:
    """Makes `import configs.x` resolve to `config_file`'s directory while it is executed.

    Only when that directory is named `configs` (as the shipped ones are); modules of another
    `configs` package imported before are set aside and restored afterwards.
    """
    directory = pathlib.Path(config_file).resolve().parent
    if directory.name != _PACKAGE:
        yield
        return
    previous = {k: v for k, v in sys.modules.items() if k == _PACKAGE or k.startswith("configs.")}
    current = previous.get(_PACKAGE)
    if current is not None and str(directory) in [
        str(pathlib.Path(p).resolve()) for p in getattr(current, "__path__", [])
    ]:
        yield  # Already this directory's package (e.g. run from the repository root).
        return
    for name in previous:
        del sys.modules[name]
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(directory)]
    sys.modules[_PACKAGE] = package
    try:
        yield
    finally:
        for name in [k for k in sys.modules if k == _PACKAGE or k.startswith("configs.")]:
            del sys.modules[name]
        sys.modules.update(previous)


def _resolve(path: str | pathlib.Path) -> pathlib.Path:
    resolved = pathlib.Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"config file {str(path)!r} does not exist; pass a path such as "
            f"configs/digits.py (the shipped configs are in {REPO_CONFIGS})."
        )
    return resolved


class _ConfigsResolvingParser(flags.ArgumentParser):
    """Wraps ml_collections' config-file parser: the file runs with `configs_package`."""

    def __init__(self, inner: flags.ArgumentParser):
        self._inner = inner

    def parse(self, argument):
        file, _, _ = str(argument).partition(":")
        with configs_package(_resolve(file)):
            return self._inner.parse(argument)

    def flag_type(self) -> str:
        return self._inner.flag_type()


def load(path: str | pathlib.Path, *overrides: str) -> ml_collections.ConfigDict:
    """Loads a config file (`get_config()`), applying `field=value` overrides as the CLI does.

    Args:
      path: a config file, e.g. 'configs/digits.py' (optionally 'file.py:argument' for a
        `get_config(argument)`).
      *overrides: 'match.family=distribution'-style strings; values are parsed as Python
        literals where they are ones (as `--config.field=value`), else kept as strings.

    Returns:
      The config, unlocked (fields can be set; new fields cannot be added).
    """
    argv = ["jaxdd", f"--config={path}", *(f"--config.{item}" for item in overrides)]
    values = flags.FlagValues()
    config_flag(values, sys_argv=argv)
    values(argv)
    config = values.config
    config.unlock()
    return config


def config_flag(
    flag_values: flags.FlagValues = flags.FLAGS,
    *,
    default: str | None = None,
    sys_argv: list[str] | None = None,
) -> flags.FlagHolder:
    """Defines `--config` (a config file) with `--config.field=value` overrides on `flag_values`.

    The default is the repository's `configs/digits.py` when jaxdd runs from a checkout;
    installed elsewhere, `--config` is required. `sys_argv`: the command line the overrides are
    read from (None: `sys.argv`, at parse time).
    """
    if default is None and (REPO_CONFIGS / "digits.py").is_file():
        default = str(REPO_CONFIGS / "digits.py")
    holder = config_flags.DEFINE_config_file(
        "config", None, "Config file (ml_collections), e.g. configs/digits.py.",
        flag_values=flag_values, lock_config=True, sys_argv=sys_argv,
    )  # fmt: skip
    # Same flag, same overrides; only the file loading resolves `configs` (configs_package).
    flag = flag_values["config"]
    flag.parser = _ConfigsResolvingParser(flag.parser)
    if default is not None:
        flag_values.set_default("config", default)
    return holder


# --- validation ----------------------------------------------------------------------------


def _fail(field: str, value: Any, expected: str) -> None:
    raise ValueError(f"config.{field}={value!r} is invalid: expected {expected}.")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    for part in field.split("."):
        config = config[part]
    return config


def _check_ints(config: ml_collections.ConfigDict, fields: tuple[str, ...], minimum: int) -> None:
    for field in fields:
        value = _get(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            _fail(field, value, f"an integer >= {minimum}")


def _check_choice(config: ml_collections.ConfigDict, field: str, choices) -> None:
    if _get(config, field) not in choices:
        _fail(field, _get(config, field), f"one of {sorted(choices)}")


_POSITIVE = (
    "ipc", "num_iterations", "log.every", "model.width", "model.depth",
    "cluster.num_clusters", "cluster.num_iters", "cluster.pool", "match.num_real",
    "match.inner_batch", "match.unroll_steps", "match.net_max_updates", "match.net_data",
    "syn.factor",
    "eval.num_models", "eval.epochs", "eval.batch_size",
    "eval.select_num_models", "eval.global_k", "eval.per_class_k", "checkpoint.every",
)  # fmt: skip
_NON_NEGATIVE = (
    "seed", "data.image_size", "syn.latent_dim", "match.group_batch", "match.unroll_window",
    "match.net_pool", "syn.max_decoded", "match.syn_ce_reset",
    "eval.select_every",
    "distributed.num_devices", "distributed.process_id",
)  # fmt: skip
# Fields that may also be -1 ("as DC": see configs/default.py), else at least the minimum.
_AUTO = {"model.stem_pad": 0, "match.outer_loop": 1, "match.inner_loop": 0}
# Families that match through a fresh network every update, or with match.net_pool > 0
# through a member of the pool, trained online between its draws (IDM's networks for
# distribution; for risk, the unroll starts from that member: RaT-BPTT's untracked prefix,
# carried across iterations instead of rerun every update).
POOLABLE = ("distribution", "risk")
# Fields of earlier versions: a config that still sets one fails with the new name.
_RENAMED = {
    "num_steps": "num_iterations (DC's iterations, each match.outer_loop image updates)",
    "log.every_steps": "log.every (in iterations)",
    "checkpoint.every_steps": "checkpoint.every (in iterations)",
    "match.net_reset_every": "match.outer_loop (a fresh network every iteration)",
    "match.net_train_steps": "match.inner_loop (epochs on the synthetic set)",
}


def _has(config: ml_collections.ConfigDict, field: str) -> bool:
    try:
        _get(config, field)
    except (AttributeError, KeyError):
        return False
    return True


def _check_renamed(config: ml_collections.ConfigDict) -> None:
    for old, new in _RENAMED.items():
        if _has(config, old):
            raise ValueError(f"config.{old} no longer exists; use config.{new}.")


# Fields whose value is a mapping of the user's own keys (not checked field by field).
_MAPPINGS = ("eval.shifts",)


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    for key, value in config.items():
        field = prefix + key
        if isinstance(value, ml_collections.ConfigDict) and field not in _MAPPINGS:
            yield from _fields(value, field + ".")
        else:
            yield field


@functools.cache
def declared_fields() -> frozenset[str]:
    """Every field `configs/default.py` declares (empty where jaxdd runs without its configs)."""
    path = REPO_CONFIGS / "default.py"
    if not path.is_file():
        return frozenset()
    with configs_package(path):
        from configs import default

        return frozenset(_fields(default.get_config()))


def _check_unknown(config: ml_collections.ConfigDict) -> None:
    """A field that configs/default.py does not declare is a typo (Python API configs are
    unlocked, so nothing else would catch `config.match.num_rael = 8`)."""
    declared = declared_fields()
    if not declared:
        return
    for field in _fields(config):
        if field not in declared:
            close = difflib.get_close_matches(field, declared, n=1)
            raise ValueError(
                f"config.{field} is not a jaxdd config field"
                + (f" (did you mean config.{close[0]}?)" if close else "")
                + "; configs/default.py declares every field."
            )


def _check_schedule(config: ml_collections.ConfigDict) -> None:
    """DC's loops exist for the ipc; krr and a pooled distribution or risk family take any
    schedule (their pool's network trains between updates); the others match through a fresh
    network."""
    outer, inner = config.match.outer_loop, config.match.inner_loop
    pooled = config.match.family in POOLABLE and config.match.net_pool
    if config.match.net_train == "real" and not (
        config.match.family in ("gradient", "krr") or pooled
    ):
        _fail(
            "match.net_train",
            "real",
            f"'synthetic' with match.family={config.match.family!r}, whose network is never "
            "trained (the gradient and krr families train it between updates, the "
            "distribution and risk families with match.net_pool > 0)",
        )
    if config.match.net_train == "real_robust":
        if config.cluster.assign != "voronoi":
            _fail(
                "match.net_train",
                "real_robust",
                "'synthetic' unless cluster.assign='voronoi' (the robust network loss is over "
                "the Voronoi cells)",
            )
        if config.match.family != "gradient":
            _fail(
                "match.net_train",
                "real_robust",
                f"'synthetic' with match.family={config.match.family!r}, whose network is never "
                "trained (only the gradient family trains it between updates)",
            )
    if config.match.family == "krr" and config.match.net_pool < 1:
        _fail(
            "match.net_pool",
            config.match.net_pool,
            "the size of the krr family's pool of online networks (>= 1; FRePo's is 10)",
        )
    if config.match.syn_ce and config.match.family != "distribution":
        _fail(
            "match.syn_ce",
            config.match.syn_ce,
            f"0 with match.family={config.match.family!r} (IDM's regulariser is the "
            "distribution family's)",
        )
    if config.match.family == "krr" or pooled:
        return  # Any schedule: -1 takes one update and one online epoch, FRePo's.
    if config.match.family == "gradient":
        if -1 in (outer, inner):
            step.dc_loops(config.ipc)  # Raises, saying what to set, for an ipc DC lacks.
        return
    if outer not in (-1, 1) or inner not in (-1, 0):
        raise ValueError(
            f"config.match.outer_loop={outer}, config.match.inner_loop={inner} are invalid for "
            f"match.family={config.match.family!r}: it matches through a fresh random network "
            "for every update (DM's protocol); use -1 (or 1 and 0)."
        )


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    _check_ints(config, _NON_NEGATIVE, 0)
    _check_ints(config, _POSITIVE, 1)
    for field, minimum in _AUTO.items():
        value = _get(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value != -1 and value < minimum:
            _fail(field, value, f"-1 (as DC) or an integer >= {minimum}")
    _check_ints(config, ("distributed.num_processes",), 1)
    if config.distributed.process_id >= config.distributed.num_processes:
        _fail(
            "distributed.process_id",
            config.distributed.process_id,
            f"an index below distributed.num_processes={config.distributed.num_processes}",
        )
    for field in ("data.validation_fraction", "data.test_fraction"):
        if not 0.0 < _get(config, field) < 1.0:
            _fail(field, _get(config, field), "a fraction in (0, 1)")
    for field in ("data.rare_fraction", "data.conflict_fraction"):
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, float | int) or not 0 < value < 0.5:
            _fail(field, value, "a fraction in (0, 0.5): the minority must stay a minority")
    for field in ("eval.cutmix", "match.net_cutmix"):
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, float | int) or not 0 <= value <= 1:
            _fail(field, value, "a probability in [0, 1] (0: no CutMix)")
    momentum = config.match.net_momentum
    if isinstance(momentum, bool) or not isinstance(momentum, float | int) or not 0 <= momentum < 1:
        _fail("match.net_momentum", momentum, "an SGD momentum in [0, 1) (DC 0, IDC 0.9)")
    if momentum and config.match.net_optimizer == "adam":
        _fail("match.net_momentum", momentum, "0 with match.net_optimizer='adam' (SGD's only)")
    if config.eval.momentum and config.eval.optimizer == "adam":
        _fail("eval.momentum", config.eval.momentum, "0 with eval.optimizer='adam' (SGD's only)")
    decay = config.match.net_weight_decay
    if isinstance(decay, bool) or not isinstance(decay, float | int) or decay < 0:
        _fail("match.net_weight_decay", decay, "a weight decay >= 0 (DC 0, IDC 5e-4)")
    weight = config.match.syn_ce
    if isinstance(weight, bool) or not isinstance(weight, float | int) or weight < 0:
        _fail("match.syn_ce", weight, "a weight >= 0 (0: DM's matching alone; IDM 0.5)")
    _check_choice(config, "match.syn_ce_accuracy", ("group", "running"))
    pooled_real = config.match.net_pool and config.match.net_train == "real"
    if build.running_ce_accuracy(config) and not pooled_real:
        _fail(
            "match.syn_ce_accuracy",
            "running",
            "'group' unless match.net_pool > 0 and match.net_train='real' (the running "
            "accuracy is a pooled network's on its real training batches)",
        )
    if not config.eval.cutmix_beta > 0:
        _fail("eval.cutmix_beta", config.eval.cutmix_beta, "a positive Beta parameter")
    alpha = config.robust.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, float | int) or not 0.0 < alpha <= 1.0:
        _fail("robust.alpha", alpha, "a tail mass in (0, 1]")
    for field in (
        "syn.lr",
        "syn.label_lr",
        "syn.generator_lr",
        "syn.unroll_lr_lr",
        "match.net_lr",
        "match.unroll_lr",
        "match.krr_ridge",
        "eval.lr",
    ):
        if not _get(config, field) > 0:
            _fail(field, _get(config, field), "a positive learning rate")


def _check_names(config: ml_collections.ConfigDict) -> None:
    name = config.data.name
    if not isinstance(name, str) or not data.is_known_name(name):
        _fail("data.name", name, f"one of {data.NAME_FORMS}")
    if config.data.rare:
        _check_choice(config, "data.rare", data.RARE_TRANSFORMS)
    if config.data.spurious:
        _check_choice(config, "data.spurious", data.SPURIOUS_ATTRIBUTES)
        if config.data.rare:
            _fail(
                "data.spurious",
                config.data.spurious,
                f"'' while data.rare={config.data.rare!r} is set (one benchmark per run: its "
                "groups are the minority of one)",
            )
    _check_choice(config, "model.name", models.MODELS)
    for name in filter(None, config.eval.architectures.split(",")):
        if name.strip() not in models.MODELS:
            _fail(
                "eval.architectures", config.eval.architectures, f"names in {sorted(models.MODELS)}"
            )
    for name in config.eval.shifts:
        if name not in shifts.SHIFTS:
            _fail(
                f"eval.shifts.{name}",
                config.eval.shifts[name],
                f"a shift in {sorted(shifts.SHIFTS)}",
            )
    _check_choice(config, "model.norm", models.NORMS)
    _check_choice(config, "model.init", models.INIT_SCHEMES)
    _check_choice(config, "cluster.features", groups_lib.FEATURES)
    _check_choice(config, "cluster.assign", groups_lib.ASSIGNMENTS)
    _check_choice(config, "match.net_train", step.NET_TRAINING)
    _check_choice(config, "syn.param", synthetic.PARAMS)
    if config.syn.param == "pixels" and config.syn.factor != 1:
        _fail("syn.factor", config.syn.factor, "1 with syn.param='pixels' (or use factorized)")
    if not isinstance(config.syn.learn_labels, bool):
        _fail("syn.learn_labels", config.syn.learn_labels, "True or False")
    if config.syn.learn_labels and config.match.family == "distribution":
        if not config.match.syn_ce:
            _fail(
                "syn.learn_labels",
                True,
                "False with match.family='distribution' and match.syn_ce=0 (matching mean "
                "embeddings does not depend on the labels, so they would never move; IDM's "
                "cross-entropy term, match.syn_ce > 0, does)",
            )
    if not isinstance(config.syn.learn_unroll_lr, bool):
        _fail("syn.learn_unroll_lr", config.syn.learn_unroll_lr, "True or False")
    if config.syn.learn_unroll_lr and config.match.family != "risk":
        _fail(
            "syn.learn_unroll_lr",
            True,
            f"False with match.family={config.match.family!r} (only the risk family unrolls "
            "a training whose learning rate the objective depends on)",
        )
    if config.syn.learn_unroll_lr and config.match.net_pool:
        _fail(
            "syn.learn_unroll_lr",
            True,
            f"False with match.net_pool={config.match.net_pool} (a learned unroll lr is kept "
            "for unrolls from a fresh network; set match.net_pool=0 to learn it)",
        )
    if config.syn.param == "generator":
        if not config.syn.generator or not config.syn.generator_checkpoint:
            _fail(
                "syn.param",
                "generator",
                "syn.generator ('package.module:Name') and syn.generator_checkpoint set with it",
            )
        if config.syn.latent_dim < 1:
            _fail("syn.latent_dim", config.syn.latent_dim, "the generator's latent size (>= 1)")
        if config.syn.init != "noise":
            _fail("syn.init", config.syn.init, "'noise' with a generator (latents drawn N(0, 1))")
    if not isinstance(config.syn.learn_generator, bool):
        _fail("syn.learn_generator", config.syn.learn_generator, "True or False")
    if config.syn.learn_generator and config.syn.param != "generator":
        _fail("syn.learn_generator", True, "False unless syn.param='generator' (there is no G)")
    if not isinstance(config.syn.clip_pixels, bool):
        _fail("syn.clip_pixels", config.syn.clip_pixels, "True or False")
    if config.syn.clip_pixels and config.syn.param == "generator":
        _fail("syn.clip_pixels", True, "False with syn.param='generator' (the set is latents)")
    if config.syn.init == "mix" and config.syn.param != "factorized":
        _fail("syn.init", "mix", "another init with syn.param='pixels' (mix tiles factorized sets)")
    _check_choice(config, "match.family", matching.FAMILIES)
    _check_choice(config, "robust.risk", risk.RISKS)
    _check_choice(config, "syn.init", synthetic.INITS)
    _check_choice(config, "match.unroll_remat", matching.REMATS)
    _check_choice(config, "match.unroll_optimizer", matching.UNROLL_OPTIMIZERS)
    _check_choice(config, "syn.optimizer", build.SYN_OPTIMIZERS)
    _check_choice(config, "match.net_optimizer", build.NET_OPTIMIZERS)
    _check_choice(config, "eval.augment_mode", augment.MODES)
    _check_choice(config, "match.augment_mode", augment.MODES)
    _check_choice(config, "eval.lr_schedule", retrain.LR_SCHEDULES)
    _check_choice(config, "eval.optimizer", retrain.OPTIMIZERS)
    _check_choice(config, "eval.loss", retrain.LOSSES)
    _check_choice(config, "eval.network", build.EVAL_NETWORKS)
    _check_choice(config, "match.distance", matching.DISTANCES)
    _check_choice(config, "match.distance_layers", matching.DISTANCE_LAYERS)
    if config.match.family != "gradient":
        for field, default in (("distance", "dc"), ("distance_layers", "weights")):
            if config.match[field] != default:
                _fail(
                    f"match.{field}",
                    config.match[field],
                    f"{default!r} with match.family={config.match.family!r} (it sets the "
                    "gradient family's distance)",
                )
    if config.match.unroll_window > config.match.unroll_steps:
        _fail(
            "match.unroll_window",
            config.match.unroll_window,
            f"at most match.unroll_steps={config.match.unroll_steps} (0: all steps)",
        )
    augment_fields = ["match.augment", "eval.augment"]
    if config.match.net_augment:  # '' = the matching's.
        augment_fields.append("match.net_augment")
    for field in augment_fields:
        try:
            augment.parse_strategy(_get(config, field))
        except ValueError as e:
            _fail(field, _get(config, field), str(e))


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every value that can be checked without data; raises ValueError naming the field."""
    _check_renamed(config)
    _check_unknown(config)
    _check_numbers(config)
    _check_names(config)
    _check_schedule(config)


def validate_against_data(config: ml_collections.ConfigDict, dataset: data.Dataset) -> None:
    """Checks the fields that depend on the data, before any clustering or distillation."""
    counts = np.bincount(dataset.train.labels, minlength=dataset.num_classes)
    smallest = int(np.argmin(counts))
    if config.cluster.assign == "kmeans" and config.cluster.num_clusters > counts[smallest]:
        raise ValueError(
            f"config.cluster.num_clusters={config.cluster.num_clusters} exceeds the smallest "
            f"class of the train split (class {smallest} has {counts[smallest]} examples); "
            "lower it."
        )
    height, width = dataset.image_shape[:2]
    if height % config.syn.factor or width % config.syn.factor:
        raise ValueError(
            f"config.syn.factor={config.syn.factor} must divide the image size "
            f"{height}x{width} (each stored image is cut into factor x factor crops); pick a "
            "divisor."
        )
    needed = config.ipc * (config.syn.factor**2 if config.syn.init == "mix" else 1)
    if config.syn.init != "noise" and needed > counts[smallest]:
        raise ValueError(
            f"config.ipc={config.ipc} needs {needed} real images per class, more than the "
            f"smallest class of the train split ({counts[smallest]} examples) with "
            f"syn.init={config.syn.init!r}; lower ipc or use syn.init=noise."
        )


# FRePo's evaluation steps by the number of training images (`script/eval.py` 208-209).
FREPO_EVAL_STEPS = {
    10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000, 1000: 10000, 2000: 40000, 5000: 40000
}  # fmt: skip
FREPO_EVAL_BATCH = 500  # `script/eval.py` 231: batches of min(N, 500).
# Data FRePo evaluates without flips (`script/eval.py` 164-169), and digits (not symmetric).
FREPO_NO_FLIP = ("mnist", "fashion_mnist", "digits")


def frepo_evaluation(
    config: ml_collections.ConfigDict, num_images: int
) -> ml_collections.ConfigDict:
    """FRePo's evaluation protocol on `config` for a set of `num_images` training images
    (`yongchao97/FRePo` `script/eval.py` 126-227, `lib/training/utils.py` 293-306), so that a
    set is scored as FRePo scores its own: networks of its evaluation ConvNet (`eval.network`
    'frepo'; FRePo trains 5, `eval.num_models` stays the config's), Adam at 3e-4 without
    weight decay, 500 warm-up steps then cosine to 0.01x, regression (MSE) to centred one-hot
    or soft labels, batches of min(N, 500) for its step count, augmented by one family per
    batch of color, crop, cutout, scale, rotate (DSA's versions of FRePo's color / translate /
    cutout / crop-zoom / rotate: the same families, DSA's magnitudes), and flips beside them
    but on MNIST, Fashion-MNIST (as FRePo) and digits. Raises ValueError for a size FRePo's
    step table lacks.
    """
    if num_images not in FREPO_EVAL_STEPS:
        raise ValueError(
            f"FRePo's evaluation has no step count for {num_images} images (its table: "
            f"{sorted(FREPO_EVAL_STEPS)}); set eval.epochs yourself after frepo_evaluation."
        )
    batches = -(-num_images // min(num_images, FREPO_EVAL_BATCH))
    evaluation = config.eval
    evaluation.network, evaluation.optimizer, evaluation.loss = "frepo", "adam", "mse"
    evaluation.lr, evaluation.momentum, evaluation.weight_decay = 3e-4, 0.0, 0.0
    evaluation.lr_schedule, evaluation.batch_size = "frepo", FREPO_EVAL_BATCH
    evaluation.epochs = max(1, FREPO_EVAL_STEPS[num_images] // batches)
    evaluation.augment_mode, evaluation.cutmix = "single", 0.0
    flips = config.data.name not in FREPO_NO_FLIP
    evaluation.augment = "color_crop_cutout_scale_rotate" + ("_flip" if flips else "")
    return config


# Config sections that fix the meaning of a checkpointed state; a resumed run must match them.
FINGERPRINT_SECTIONS = ("seed", "ipc", "data", "model", "cluster", "match", "robust", "syn")


# Fields added to fingerprinted sections after runs were checkpointed: at their default they
# are left out of the fingerprint, so that those runs still resume. A field added to `eval`
# belongs here too: benchmark records store the resolved eval section (`resolved`), and a
# record made before the field existed still stands for a run at its default.
_ADDED_FIELDS = {
    "data.image_size": 0,
    "data.spurious": "",
    "data.conflict_fraction": 0.05,
    "cluster.assign": "kmeans",
    "cluster.pool": 256,
    "match.net_train": "synthetic",
    "match.net_momentum": 0.0,
    "match.net_weight_decay": 0.0,
    "match.net_data": 500,
    "match.net_cutmix": 0.5,
    "match.augment_mode": "single",
    "match.distance": "dc",
    "match.distance_layers": "weights",
    "syn.param": "pixels",
    "syn.factor": 1,
    "syn.learn_labels": False,
    "syn.label_lr": 0.1,
    "syn.generator": "",
    "syn.generator_checkpoint": "",
    "syn.latent_dim": 0,
    "syn.learn_generator": False,
    "syn.generator_lr": 0.01,
    "match.unroll_window": 0,
    "match.unroll_optimizer": "sgd",
    "match.net_pool": 0,
    "match.net_max_updates": 100,
    "match.krr_ridge": 1e-6,
    "syn.optimizer": "sgd",
    "syn.learn_unroll_lr": False,
    "syn.max_decoded": 128,
    "syn.clip_pixels": False,
    "syn.unroll_lr_lr": 0.01,
    "match.net_optimizer": "sgd",
    "eval.optimizer": "sgd",
    "eval.loss": "ce",
    "eval.network": "",
    "match.net_augment": "",
    "match.syn_ce": 0.0,
    "match.syn_ce_accuracy": "group",
    "match.syn_ce_reset": 100,
}


# Fields that only one matching family reads. A run of another family depends on none of
# them, so they are left out of its fingerprint, and out of a saved one before the two are
# compared (`comparable`): changing, say, the risk family's default unroll lr leaves every
# other family's checkpoints resumable, while the risk family's own are refused, naming it.
_FAMILY_ONLY_FIELDS = {
    "risk": (
        "match.unroll_steps",
        "match.unroll_lr",
        "match.unroll_remat",
        "match.unroll_window",
        "match.unroll_optimizer",
        "syn.learn_unroll_lr",
        "syn.unroll_lr_lr",
    ),
    "krr": ("match.krr_ridge",),
    "distribution": ("match.syn_ce", "match.syn_ce_accuracy", "match.syn_ce_reset"),
}


def comparable(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """`fingerprint` (a run's, or one read from a checkpoint) without the fields of the matching
    families its run does not use."""
    family = fingerprint.get("match", {}).get("family")
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in fingerprint.items()}
    for other, fields in _FAMILY_ONLY_FIELDS.items():
        for field in fields if other != family else ():
            section, _, key = field.partition(".")
            out.get(section, {}).pop(key, None)
    return out


def resolved(
    config: ml_collections.ConfigDict, sections: tuple[str, ...] = FINGERPRINT_SECTIONS
) -> dict[str, Any]:
    """`config`'s `sections` (top-level fields) as JSON values, without the fields added since
    runs were recorded while they hold their defaults (`_ADDED_FIELDS`) and without the
    fields of matching families the config does not use (`comparable`)."""
    values = json.loads(config.to_json_best_effort())
    for field, default in _ADDED_FIELDS.items():
        section, _, key = field.partition(".")
        if values[section].get(key) == default:
            del values[section][key]
    return comparable({field: values[field] for field in sections})


def fingerprint(config: ml_collections.ConfigDict, dataset: data.Dataset) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (num_iterations, eval and logging may
    change; so may the fields of the matching families the run does not use)."""
    return {
        **resolved(config),
        "dataset": dataset.name,
        "image_shape": list(dataset.image_shape),
        "num_classes": dataset.num_classes,
    }
