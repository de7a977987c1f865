"""Multi-device distillation: the step split over 4 forced CPU devices equals the 1-device step.

XLA's host device count is fixed when JAX starts, so the checks run in a subprocess started
with `--xla_force_host_platform_device_count=4` (this file's `__main__`).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_worker(tmp_path: pathlib.Path, check: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, __file__, check, str(tmp_path), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


# Gradient matching learns its labels too (the run test below covers fixed labels on 4 devices);
# it checks K = 2 (the cluster axis padded to 4 devices) and K = 4, the other families only the
# padded case (the sharding of the group axis is the families' shared code; compiles are what
# this file's time goes to). The distribution family runs as IDM: its pool of networks trained
# on real data, the regulariser weighted by the drawn network's running accuracy (a replicated
# input of the per-group losses).
@pytest.mark.parametrize("family", ["gradient+labels", "distribution+idm", "risk", "krr"])
def test_step_on_4_devices_matches_one_device(tmp_path, family):
    result = _run_worker(tmp_path, family)
    assert result["devices"] == 4
    for num_clusters, r in result["runs"].items():
        # K=2 on 4 devices pads the cluster axis with repeated groups: their losses are dropped.
        assert r["output_devices"] == 4, num_clusters
        np.testing.assert_allclose(r["losses_mesh"], r["losses_single"], rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(r["images_mesh"], r["images_single"], rtol=2e-4, atol=2e-5)
        # The update really moved the images, and by the single-device amount, not 4x (an
        # extra pmean/psum) or 1/4 (a device's share only).
        moved = np.abs(np.subtract(r["images_single"], r["images_init"])).max()
        assert moved > 1e-4, num_clusters
        np.testing.assert_allclose(r["grad_norm_mesh"], r["grad_norm_single"], rtol=2e-4)
        # Learned labels: their gradient is summed over devices once, as the images'.
        np.testing.assert_allclose(r["labels_mesh"], r["labels_single"], rtol=2e-4, atol=2e-6)
        if family.endswith("+labels"):
            assert np.abs(np.subtract(r["labels_single"], r["labels_init"])).max() > 1e-4
        init_lr, single_lr, mesh_lr = r["unroll_lr"]  # log lr; nan where not learned.
        np.testing.assert_allclose(mesh_lr, single_lr, rtol=2e-4, atol=1e-6)
        if family == "risk":
            assert abs(single_lr - init_lr) > 1e-5


def test_run_uses_all_devices_and_matches_one_device(tmp_path):
    result = _run_worker(tmp_path, "run")
    assert result["mesh_sizes"] == [1, 4]  # distributed.num_devices 1, and 0 = every device.
    assert "config.distributed.num_devices=5 exceeds the 4 devices" in result["too_many"]
    np.testing.assert_allclose(result["all"], result["one"], rtol=1e-3, atol=1e-4)


# --- worker (runs with 4 forced CPU devices) ------------------------------------------------


def _step_check(family: str) -> dict:
    import jax
    import jax.numpy as jnp

    from configs import smoke
    from jaxdd import build, sharding, step
    from jaxdd import groups as groups_lib

    runs = {}
    for num_clusters in (2, 4) if family == "gradient+labels" else (2,):
        config = smoke.get_config()
        config.model.width, config.model.depth = 8, 2
        config.match.family, _, variant = family.partition("+")
        config.syn.learn_labels, config.syn.label_lr = variant == "labels", 1.0
        # The risk family learns its unroll lr: an extra differentiated replicated input.
        config.syn.learn_unroll_lr = config.match.family == "risk"
        config.match.num_real = 4
        if config.match.family == "krr" or variant == "idm":  # A pool, replicated with the state.
            config.match.net_pool, config.match.outer_loop, config.match.inner_loop = 3, -1, -1
        if variant == "idm":
            config.match.syn_ce, config.match.syn_ce_accuracy = 0.5, "running"
            config.match.net_train, config.match.net_augment = "real", "none"
            config.match.net_data, config.match.inner_batch, config.match.net_cutmix = 8, 4, 0.0
        config.cluster.num_clusters = num_clusters
        num_classes, per_class = 3, 16
        images = jax.random.normal(jax.random.key(0), (num_classes * per_class, 8, 8, 1))
        labels = np.repeat(np.arange(num_classes), per_class)
        assignments = np.tile(np.arange(per_class) % num_clusters, num_classes)
        groups = groups_lib.make_groups(
            labels, assignments, num_classes=num_classes, num_clusters=num_clusters
        )
        model = build.create_model(config, num_classes, (8, 8, 1))
        real = step.RealData(
            images=images + labels[:, None, None, None], groups=groups, labels=jnp.asarray(labels)
        )
        state = build.create_state(config, real, key=jax.random.key(1), model=model)
        if variant == "idm":  # Meters at 75 %: the regulariser acts.
            meter = jnp.tile(jnp.array([[6.0, 8.0]]), (config.match.net_pool, 1))
            state = state.replace(pool=state.pool.replace(meter=meter))
        key = jax.random.key(2)

        single_state, single = build.create_step(config, model, (8, 8, 1))(state, key, real)
        mesh = sharding.create_mesh(config)
        step_fn = build.create_step(config, model, (8, 8, 1), mesh)
        mesh_state, sharded = step_fn(*sharding.replicate((state, key), mesh), real)
        runs[str(num_clusters)] = {
            "output_devices": len(mesh_state.images.sharding.device_set),
            "losses_single": np.asarray(single["group_losses"]).tolist(),
            "losses_mesh": np.asarray(sharded["group_losses"]).tolist(),
            "images_init": np.asarray(state.images).tolist(),
            "images_single": np.asarray(single_state.images).tolist(),
            "images_mesh": np.asarray(mesh_state.images).tolist(),
            "grad_norm_single": float(single["grad_norm"]),
            "grad_norm_mesh": float(sharded["grad_norm"]),
            "labels_init": np.asarray(state.labels).tolist(),
            "labels_single": np.asarray(single_state.labels).tolist(),
            "labels_mesh": np.asarray(mesh_state.labels).tolist(),
            "unroll_lr": [
                float(getattr(s, "log_unroll_lr", np.nan))
                for s in (state, single_state, mesh_state)
            ],
        }
    return {"devices": jax.device_count(), "runs": runs}


def _run_check(tmp_path: pathlib.Path) -> dict:
    import jaxdd
    from configs import smoke
    from jaxdd import sharding

    results, sizes = {}, []
    for name, num_devices in (("one", 1), ("all", 0)):
        config = smoke.get_config()
        config.num_iterations = 3
        config.eval.num_models, config.eval.epochs, config.eval.select_every = 1, 1, 0
        config.eval.select_num_models = 1  # One compiled training program for both.
        config.eval.shifts = {"invert": 0.0}  # Each shift is a compile; run_test checks all.
        config.distributed.num_devices = num_devices
        sizes.append(sharding.create_mesh(config).size)
        jaxdd.distill(config, tmp_path / name)
        results[name] = np.load(tmp_path / name / "synthetic_last.npz")["images"].tolist()
    config.distributed.num_devices = 5
    try:
        sharding.create_mesh(config)
        too_many = ""
    except ValueError as e:
        too_many = str(e)
    return {**results, "mesh_sizes": sizes, "too_many": too_many}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    import tests.conftest  # noqa: F401  (the persistent compilation cache)

    check, tmp, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    result = _run_check(tmp) if check == "run" else _step_check(check)
    out.write_text(json.dumps(result))
