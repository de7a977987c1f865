"""Tests for jaxdd.config: loading config files from anywhere, validation, the fingerprint."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from configs import smoke
from jaxdd import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_load_applies_overrides_as_the_cli_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Not the repository: `configs` resolves from the file.
    config = config_lib.load(
        REPO / "configs" / "smoke.py", "num_steps=7", "robust.risk=max", "robust.alpha=0.25"
    )
    assert (config.num_steps, config.robust.risk, config.robust.alpha) == (7, "max", 0.25)
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
    ],
)
def test_validation_names_the_field(field, value, message):
    config = smoke.get_config()
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)
