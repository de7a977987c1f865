"""Does CVaR pick its tail groups for their difficulty or for their sampling noise?

Each update estimates the C*K group losses from m real samples per group (and one DSA draw per
class), and CVaR puts all its weight on the worst alpha-fraction of those estimates. Where the
noise of an estimate is large against the spread of the true losses, the tail is a lottery:
it changes from draw to draw at a fixed synthetic set and network, and its CVaR is inflated by
selection (the winner's curse). This benchmark measures that at a fresh network (as every DC
iteration begins) and the synthetic set after `--after` distillation iterations (0: the
initial random real images; the robust objective, the dataset's config), per m:

- `truth`: each group's loss averaged over `--truth-draws` draws at m = `--truth-m` (sampling
  and augmentation redrawn);
- `jaccard`: overlap |A & B| / |A | B| of the tails of two independent draws at m;
- `recall`: share of the true tail that a draw's tail contains;
- `spearman`: rank correlation of a draw with the truth;
- `noise/spread`: mean over groups of the std of a group's estimate over draws, divided by
  the std of the true losses over groups;
- `cvar inflation`: mean over draws of CVaR(draw) / CVaR(truth) - 1;
- `minority share`: on a rare or spurious benchmark, the share of the tail's weight on groups
  whose members are mostly the minority, in the draws and in the truth.

Run from the repository root:

  python -m benchmarks.tail_noise --dataset=digits+rare --ipc=10 --seeds=0,1,2

writes benchmarks/results/tail_noise.md and .json (every seed's figures, the command, the
machine).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib

import jax
import numpy as np
import scipy.stats

from benchmarks import harness
from jaxdd import build, models, risk, sharding
from jaxdd import groups as groups_lib


def group_losses_fn(config, model):
    """jitted (params, images, labels, real, groups, key, *, num_real) -> (C, K) group losses,
    as the step computes them (same family, augmentation and sampling)."""
    apply_fn = lambda params, x: model.apply({"params": params}, x)
    losses_fn = build.create_losses_fn(config, apply_fn)

    @functools.partial(jax.jit, static_argnames="num_real")
    def losses(params, images, labels, real, groups, key, *, num_real):
        sample_key, loss_key = jax.random.split(key)
        return sharding.compute_group_losses(
            losses_fn,
            params,
            images,
            labels=labels,
            images=real,
            index=groups_lib.sample_groups(groups, num_real, key=sample_key),
            key=loss_key,
        )

    return losses


def tail_mask(losses: np.ndarray, alpha: float) -> np.ndarray:
    """(n,) bool: the ceil(alpha * n) largest losses (the groups CVaR_alpha weighs)."""
    count = int(np.ceil(alpha * losses.size - 1e-9))
    mask = np.zeros(losses.size, bool)
    mask[np.argsort(-losses, kind="stable")[:count]] = True
    return mask


def measure(
    config, *, ms: list[int], draws: int, truth_m: int, truth_draws: int, after: int
) -> dict:
    """The figures of the module docstring for one seed's config, after `after` iterations."""
    run = harness.initial_run(config)
    dataset, rare, groups, model, real = run.dataset, run.rare, run.groups, run.model, run.real
    state, step_fn, init_key, net_key = run.state, run.step_fn, run.init_key, run.third_key
    for iteration in range(after):
        state, _ = step_fn(state, jax.random.fold_in(init_key, iteration), real)
    params = models.init_params(model, jax.random.fold_in(net_key, after), dataset.image_shape)
    losses = group_losses_fn(config, model)
    args = (params, state.images, state.labels, real.images, groups)
    alpha = float(config.robust.alpha)

    def sample(num_real: int, count: int, offset: int) -> np.ndarray:
        keys = [
            jax.random.fold_in(jax.random.key(config.seed + 1), offset + i) for i in range(count)
        ]
        return np.stack([np.asarray(losses(*args, k, num_real=num_real)).reshape(-1) for k in keys])

    truth = sample(truth_m, truth_draws, 10_000).mean(axis=0)
    true_tail = tail_mask(truth, alpha)
    minority = minority_groups(rare, groups) if rare is not None else None
    result = {
        "groups": int(truth.size),
        "alpha": alpha,
        "truth_cvar": float(risk.cvar(truth, alpha)),
        "truth_spread": float(truth.std()),
        "per_m": {},
    }
    if minority is not None:
        result["minority_groups"] = int(minority.sum())
        result["truth_minority_share"] = float(true_tail[minority].sum() / true_tail.sum())
    for index, num_real in enumerate(ms):
        estimates = sample(num_real, draws, 1000 * (index + 1))
        tails = [tail_mask(e, alpha) for e in estimates]
        pairs = zip(tails[:-1], tails[1:], strict=True)  # Consecutive draws.
        figures = {
            "jaccard": float(np.mean([(a & b).sum() / (a | b).sum() for a, b in pairs])),
            "recall": float(np.mean([(t & true_tail).sum() / true_tail.sum() for t in tails])),
            "spearman": float(
                np.mean([scipy.stats.spearmanr(e, truth).statistic for e in estimates])
            ),
            "noise_over_spread": float(estimates.std(axis=0).mean() / truth.std()),
            "cvar_inflation": float(
                np.mean([float(risk.cvar(e, alpha)) for e in estimates]) / result["truth_cvar"] - 1
            ),
        }
        if minority is not None:
            figures["minority_share"] = float(np.mean([t[minority].sum() / t.sum() for t in tails]))
        result["per_m"][str(num_real)] = figures
    return result


def minority_groups(rare, groups: groups_lib.Groups) -> np.ndarray:
    """(C*K,) bool: groups whose members are mostly the benchmark's minority."""
    members, sizes = np.asarray(groups.members), np.asarray(groups.sizes)
    mask = rare.minority("train")
    share = [
        mask[members[c, k, : sizes[c, k]]].mean()
        for c in range(sizes.shape[0])
        for k in range(sizes.shape[1])
    ]
    return np.asarray(share) > 0.5


def summarise(records: list[dict]) -> str:
    lines = [
        "# CVaR's tail: difficulty or sampling noise?",
        "",
        "Commands (each row records the one that produced it):",
        *[f"- `{c}`" for c in sorted({r["command"] for r in records})],
        "",
        f"{harness.machines_line(records)}.  ",
        "At a fresh network, as every DC iteration starts, and the synthetic set after the "
        "row's distillation iterations (0: the initial random real images); the dataset's "
        "config and the robustness protocol; the truth is each group's loss averaged over many "
        "draws at a large m. Means over draws; see the module docstring of "
        "benchmarks/tail_noise.py for each column.",
        "",
        *harness.findings_link(harness.RESULTS / "tail_noise"),
    ]
    for dataset in sorted({r["dataset"] for r in records}):
        rows = [r for r in records if r["dataset"] == dataset]
        first = rows[0]["result"]
        lines += [
            f"## {dataset}, IPC {rows[0]['ipc']}: {first['groups']} groups, CVaR alpha "
            f"{first['alpha']}, truth at m = {rows[0]['truth_m']} x {rows[0]['truth_draws']} draws",
            "",
        ]
        has_minority = "truth_minority_share" in first
        columns = [
            "seed", "after iterations", "m", "jaccard between draws", "recall of true tail",
            "spearman", "noise/spread", "cvar inflation",
        ]  # fmt: skip
        columns += ["tail on minority groups (truth)"] if has_minority else []
        header = "| " + " | ".join(columns) + " |"
        lines += [header, "|---" * len(columns) + "|"]
        for r in sorted(rows, key=lambda r: (r["seed"], r["after"])):
            res = r["result"]
            for m, f in res["per_m"].items():
                cells = [
                    f"{f['jaccard']:.2f}", f"{f['recall']:.2f}", f"{f['spearman']:.2f}",
                    f"{f['noise_over_spread']:.2f}", f"{100 * f['cvar_inflation']:+.1f} %",
                ]  # fmt: skip
                if has_minority:
                    cells.append(
                        f"{f['minority_share']:.2f} ({res['truth_minority_share']:.2f} of "
                        f"{res['minority_groups']} groups)"
                    )
                lines.append(f"| {r['seed']} | {r['after']} | {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits+rare")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--after", default="0,10", help="distillation iterations before")
    parser.add_argument("--ms", default="8,16,32,64,128")
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--truth-m", type=int, default=512)
    parser.add_argument("--truth-draws", type=int, default=16)
    harness.add_results_arguments(parser, "tail_noise")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    key = lambda r: (
        r["dataset"], r["ipc"], r["seed"], r["after"], json.dumps(r["settings"], sort_keys=True)
    )  # fmt: skip
    records = harness.load_results(out.with_suffix(".json"), [])
    if not args.render:
        command, machine = harness.command("tail_noise"), harness.machine()
        for seed, after in [
            (s, a) for s in map(int, args.seeds.split(",")) for a in map(int, args.after.split(","))
        ]:
            config = harness.measurement_config(
                args.dataset, ipc=args.ipc, seed=seed, overrides=args.set
            )
            timer = harness.Timer()
            result = measure(
                config,
                ms=[int(m) for m in args.ms.split(",")],
                draws=args.draws,
                truth_m=args.truth_m,
                truth_draws=args.truth_draws,
                after=after,
            )
            record = {
                "dataset": args.dataset, "ipc": args.ipc, "seed": seed, "after": after,
                "truth_m": args.truth_m, "truth_draws": args.truth_draws,
                "settings": harness.parse_overrides(args.set), "result": result,
                "seconds": timer(), "command": command, "machine": machine,
            }  # fmt: skip
            records = harness.merge_results(out.with_suffix(".json"), [record], key=key)
            print(f"{args.dataset} seed {seed} after {after}: {result['per_m']} ({timer():.0f} s)")
    out.with_suffix(".md").write_text(summarise(records))


if __name__ == "__main__":
    main()
