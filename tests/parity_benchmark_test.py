"""Tests for benchmarks/parity.py's tables: sides compared on the seeds they share."""

import numpy as np

from benchmarks import parity


def _record(side: str, seed: int, accuracy: float, distill_s: float = 0.0) -> dict:
    return {
        "dataset": "fashion_mnist", "ipc": 10, "method": "dc", "iterations": 10, "seed": seed,
        "side": side, "distill_s": distill_s,
        "jaxdd_eval": {"accuracy_mean": accuracy, "accuracy_std": 0.1},
        "torch_eval": [accuracy - 0.5, accuracy + 0.5],
    }  # fmt: skip


def test_a_side_with_seeds_still_running_is_compared_on_the_shared_seeds():
    """jaxdd has seeds 0 and 1, torch only 0: jaxdd − torch and torch's gain use seed 0 only
    (the table once set jaxdd's mean over 0,1 against torch's seed 0)."""
    records = [
        _record("random", 0, 70.0), _record("random", 1, 60.0),
        _record("jaxdd", 0, 80.0, 100.0), _record("jaxdd", 1, 90.0, 300.0),
        _record("torch", 0, 79.0, 200.0),
    ]  # fmt: skip
    text = "\n".join(parity.table(records))
    assert "jaxdd − torch (both sides' seeds: seed 0): +1.00 points by jaxdd's evaluator" in text
    assert "wall time jaxdd / torch = 0.50." in text
    torch_row = next(line for line in text.splitlines() if line.startswith("| torch |"))
    assert "| +9.00 / +9.00 |" in torch_row  # 79 − 70 on seed 0, not 79 − mean(70, 60).
    jaxdd_row = next(line for line in text.splitlines() if line.startswith("| jaxdd |"))
    assert "| +20.00 / +20.00 |" in jaxdd_row  # (80 − 70 + 90 − 60) / 2.


def test_runs_with_set_overrides_are_their_own_records_and_table():
    """`--set` runs (e.g. IDM's regulariser off on both sides) never replace or mix with the
    runs without overrides: their own record keys, their own table, named by the overrides."""
    plain = [_record("jaxdd", 0, 80.0), _record("torch", 0, 79.0)]
    ablated = [{**r, "set": {"match.syn_ce": 0.0}} for r in (_record("jaxdd", 0, 85.0),
                                                           _record("torch", 0, 83.0))]  # fmt: skip
    assert parity.record_key(plain[0]) != parity.record_key(ablated[0])
    assert parity.record_key(plain[0])[-1] == ""  # Records written before --set keep their key.
    text = "\n".join(parity.table(plain + ablated))
    assert "## fashion_mnist, IPC 10, DC, 10 iterations\n" in text
    assert "## fashion_mnist, IPC 10, DC, 10 iterations, with match.syn_ce=0.0\n" in text
    assert "+1.00 points by jaxdd's evaluator" in text and "+2.00 points" in text
    config = parity.parity_config(
        "digits", ipc=1, method="idm", iterations=2, seed=0, models=1,
        overrides=("match.syn_ce=0.0",),
    )  # fmt: skip
    assert config.match.syn_ce == 0.0 and parity.idm_settings(config)["ce_weight"] == 0.0


def test_sides_with_the_same_seeds_average_over_all_of_them():
    sides = (("jaxdd", 80.0), ("torch", 79.5))
    records = [_record(side, seed, acc + seed, 1.0) for side, acc in sides for seed in (0, 1, 2)]
    text = "\n".join(parity.table(records))
    assert "jaxdd − torch (mean over seeds): +0.50 points" in text


def test_idm_parity_starts_both_sides_from_jaxdds_mix_set_and_runs_idms_loop(tmp_path):
    """`--method=idm`: the `:idm` config keeps its `mix` start; the torch side is given the
    stored images, and its decoded start is jaxdd's (the 'random' side); two iterations of
    IDM's loop on digits give a decoded set of 4 x C x ipc images with their labels."""
    import pytest

    pytest.importorskip("torch")
    from jaxdd import build, synthetic
    from jaxdd import run as run_lib

    config = parity.parity_config("digits", ipc=1, method="idm", iterations=2, seed=0, models=1)
    assert config.syn.init == "mix" and config.match.num_real == 64
    dataset, _ = build.load_data(config)
    start = parity.initial_start(config, dataset)
    assert start["init_images"].shape == (10, 8, 8, 1)
    assert set(parity.start_record(start)) == {"init_images_sha256"}
    decoded, labels = run_lib.initial_set(config, dataset)
    stored = start["init_images"].reshape(10, 1, 8, 8, 1)
    redecoded, _ = synthetic.decode(stored, np.zeros((10, 1)), param="factorized", factor=2)
    np.testing.assert_allclose(np.asarray(redecoded).reshape(decoded.shape), decoded, atol=1e-6)

    images, torch_labels = parity.torch_distill(config, dataset, start, tmp_path / "t.pt", "cpu")
    assert images.shape == (40, 8, 8, 1)
    np.testing.assert_array_equal(np.sort(torch_labels), np.sort(labels))
    assert parity.idm_settings(config)["net_generate_interval"] == 5
    config.match.net_momentum = 0.5
    with pytest.raises(ValueError, match="net_momentum=0.5 \\(IDM: 0.9\\)"):
        parity.idm_settings(config)
