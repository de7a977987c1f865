"""Speed and memory of the distillation step, measured against this machine's matmul peak.

Run from the repository root:

  python -m benchmarks.step_time                      # everything below
  python -m benchmarks.step_time --sections=steps --shapes=digits --ipcs=1,10
  python -m benchmarks.step_time --render             # rewrite the .md from the .json only

Sections (`--sections`, comma-separated):
  steps    for each matching family x {digits 8x8x1, fashion_mnist 28x28x1, svhn 32x32x3}
           x IPC: the shipped config's full `train_step` (groups sampled, DSA, matching, risk,
           synthetic update, DC's inner network training): compile time, median step time,
           FLOPs per step, achieved FLOP/s against the dense-matmul peak measured in the same
           run, and the compiled memory (arguments + outputs + XLA temporaries).
  scaling  the gradient family's matching objective on digits as K grows (m fixed), and the
           grouped (C, K, m) losses against one ungrouped loss over the same C*K*m images.
  torch    the same robust gradient-matching objective in PyTorch eager with per-class and
           per-cluster Python loops (`benchmarks.torch_reference`, the `bench` extra),
           same shapes, same CPU, same run.
  memory   compiled peak memory of the risk family's unrolled objective for T = 10..80
           under each `match.unroll_remat`.
  eval     the evaluation protocol's cost (`jaxdd.retrain`): M networks trained on IPC x C
           images with the shipped config's evaluation settings (DSA), then predicting
           10,000 test images, with the networks vmapped (`vectorize=True`) and mapped one
           after another (`vectorize=False`): first call (with compile), second call, and
           the largest parameter difference between the two.

Data is random (mock) with the datasets' shapes: timings do not depend on pixel values.
FLOPs: XLA's cost analysis counts a loop body once, whatever its trip count, so "FLOPs/step"
is counted as the matching objective compiled with its loops unrolled and without
rematerialisation (the useful work); XLA's own figure for the compiled step is listed beside
it. A timed step is one image update with a fresh network (`match.outer_loop=1`, no inner
training); rows recorded before the DC-schedule change (column `net_train_steps`) counted that
many inner SGD steps too. Results go to
benchmarks/results/step_time.{md,json} (`--out`), merged by section into what is there, so a
run of some sections keeps the others; the .md links the hand-written
step_time_findings.md (`<out>_findings.md`) and holds no prose of its own. No persistent
compilation cache is used.

The step is built as a run builds it (`jaxdd.build.create_step` over
`jaxdd.sharding.create_mesh`); the objective-only sections compile the robust objective
(`jaxdd.step.robust_objective` over `jaxdd.build.create_losses_fn`) as `create_step` compiles
it (`jaxdd.xla.jit`, fast_compile).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import harness
from jaxdd import build, matching, models, retrain, sharding, step, xla
from jaxdd import groups as groups_lib

# Shipped config (configs/<name>.py) -> the image shape of its dataset.
SHAPES = {"digits": (8, 8, 1), "fashion_mnist": (28, 28, 1), "svhn": (32, 32, 3)}
FAMILIES = ("gradient", "distribution", "risk", "krr")


def matmul_peak(size: int = 4096, repeats: int = 5, dtype=jnp.float32) -> float:
    """Dense matmul FLOP/s of this machine through XLA; f32 accumulation. The best of
    `repeats` runs, under XLA's default options and under jaxdd's (`jaxdd.xla`: on CPU,
    YNNPACK dots, which are faster on the step's shapes but not on one large GEMM)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    matmul = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
    best = float("inf")
    for options in ({}, xla.compiler_options(jax.default_backend())):
        f = jax.jit(matmul, compiler_options=options).lower(a, a).compile()
        jax.block_until_ready(f(a, a))
        best = min([best] + [harness.wall(f, a, a) for _ in range(repeats)])
    return 2 * size**3 / best


def family_config(shape_name: str, family: str, ipc: int) -> ml_collections.ConfigDict:
    """The shipped config `configs/<shape_name>.py` with matching `family` at `ipc`, one image
    update per step (an iteration of outer_loop 1: a fresh network, no inner training; krr:
    FRePo's step, a network of a pool of 10 that then trains one epoch on the set)."""
    pool = ["match.inner_loop=0"]
    if family == "krr":
        pool = ["match.net_pool=10", "match.inner_loop=1"]
    return harness.load_config(
        shape_name, f"ipc={ipc}", f"match.family={family}", "match.outer_loop=1", *pool
    )


def mock_real(config, image_shape, num_classes: int = 10) -> step.RealData:
    """Random images, each group holding exactly m members (C * K * m images)."""
    num_clusters, m = config.cluster.num_clusters, config.match.num_real
    per_class = num_clusters * max(m, config.ipc)
    images = jax.random.normal(jax.random.key(0), (num_classes * per_class, *image_shape))
    labels = np.repeat(np.arange(num_classes), per_class)
    assignments = np.tile(np.arange(per_class) % num_clusters, num_classes)
    groups = groups_lib.make_groups(
        labels, assignments, num_classes=num_classes, num_clusters=num_clusters
    )
    return step.RealData(images=images, groups=groups)


def problem(config, image_shape):
    """(model, real, state) of `config` on mock data of `image_shape`, 10 classes."""
    model = build.create_model(config, 10, image_shape)
    real = mock_real(config, image_shape)
    return model, real, build.create_state(config, real, key=jax.random.key(0), model=model)


def _objective(config, model, state, real, *, remat=None, unroll=1):
    """The jitted robust objective's value_and_grad w.r.t. the synthetic images, and its
    arguments. `remat` replaces `match.unroll_remat`, `unroll` is the risk family's scan
    unroll (True: every step unrolled)."""
    if remat is not None:
        config = config.copy_and_resolve_references()
        config.match.unroll_remat = remat
    apply_fn = lambda params, x: model.apply({"params": params}, x)
    losses = build.create_losses_fn(config, apply_fn)
    if config.match.family == "risk":
        losses = functools.partial(losses, unroll=unroll)

    def objective(net_params, images, real_images, key):
        return jax.value_and_grad(
            lambda s: step.robust_objective(
                s,
                losses_fn=functools.partial(
                    losses, net_params, labels=state.labels, real=real_images, key=key
                ),
                risk_name=config.robust.risk,
                alpha=config.robust.alpha,
            ),
            has_aux=True,
        )(images)

    index = groups_lib.sample_groups(real.groups, config.match.num_real, key=jax.random.key(1))
    net_params = models.init_params(model, jax.random.key(2), state.images.shape[2:])
    args = (net_params, state.images, real.images[index], jax.random.key(2))
    return xla.jit(objective, fast_compile=True), args  # As `build.create_step` compiles.


def useful_flops(config, model, state, real) -> float:
    """FLOPs of one step with every loop counted at its trip count (see module docstring)."""
    config = config.copy_and_resolve_references()
    config.match.group_batch = 0  # All groups in one vmap: no `lax.map` loop to undercount.
    objective, args = _objective(config, model, state, real, remat="none", unroll=True)
    return float(objective.lower(*args).compile().cost_analysis()["flops"])


def bench_steps(args, peak: float) -> list[dict]:
    rows = []
    for shape_name in args.shapes.split(","):
        image_shape = SHAPES[shape_name]
        for family in args.families.split(","):
            ipcs = args.ipcs if shape_name == "digits" else args.large_ipcs
            for ipc in (int(i) for i in ipcs.split(",")):
                config = family_config(shape_name, family, ipc)
                model, real, state = problem(config, image_shape)
                # As the run loop does: the groups split over a mesh of every local device.
                mesh = sharding.create_mesh(config)
                step_fn = build.create_step(config, model, image_shape, mesh)
                state, key, real = sharding.replicate((state, jax.random.key(3), real), mesh)
                timer = harness.Timer()
                compiled = step_fn.lower(state, key, real).compile()
                compile_s = timer()
                repeats = args.repeats if shape_name == "digits" else args.repeats_large
                median, times = harness.timed(compiled, state, key, real, repeats=repeats)
                flops = useful_flops(config, model, state, real)
                row = {
                    "shape": shape_name,
                    "image_shape": list(image_shape),
                    "family": family,
                    "ipc": ipc,
                    "groups": f"10x{config.cluster.num_clusters}x{config.match.num_real}",
                    "model": f"{config.model.name}-{config.model.width} depth {config.model.depth}",
                    "inner_loop": build.loops(config)[1],
                    "compile_s": compile_s,
                    "step_s": median,
                    "times_s": times,
                    "flops": flops,
                    "xla_flops": float(compiled.cost_analysis()["flops"]),
                    "flops_per_s": flops / median,
                    "peak_fraction": flops / median / peak,
                    "peak": peak,
                    "memory_bytes": harness.compiled_memory_bytes(compiled),
                    "devices": mesh.size,
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
    return rows


def recount(results: dict) -> None:
    """Recomputes the useful FLOPs of recorded step rows (compile only, no timing)."""
    for row in results.get("steps", []):
        config = family_config(row["shape"], row["family"], row["ipc"])
        model, real, state = problem(config, SHAPES[row["shape"]])
        row["flops"] = useful_flops(config, model, state, real)
        row["flops_per_s"] = row["flops"] / row["step_s"]
        row["peak_fraction"] = row["flops_per_s"] / row["peak"]
        print(json.dumps({k: row[k] for k in ("shape", "family", "ipc", "flops")}), flush=True)


def bench_scaling(args) -> dict:
    config = family_config("digits", "gradient", 10)
    out = {"clusters": [], "grouped": None}
    for k in (1, 2, 4, 8, 16):
        config.cluster.num_clusters = k
        model, real, state = problem(config, (8, 8, 1))
        objective, obj_args = _objective(config, model, state, real)
        median, _ = harness.timed(objective, *obj_args, repeats=args.repeats)
        out["clusters"].append({"K": k, "real_images": 10 * k * config.match.num_real, "s": median})
        print(json.dumps(out["clusters"][-1]), flush=True)
    # Same C*K*m real images: (C, K=4, m) groups against one group of 4m per class.
    timings = {}
    for name, (k, m) in {"grouped": (4, 64), "ungrouped": (1, 256)}.items():
        config.cluster.num_clusters, config.match.num_real = k, m
        model, real, state = problem(config, (8, 8, 1))
        objective, obj_args = _objective(config, model, state, real)
        timings[name] = harness.timed(objective, *obj_args, repeats=args.repeats)[0]
    out["grouped"] = {**timings, "ratio": timings["grouped"] / timings["ungrouped"]}
    print(json.dumps(out["grouped"]), flush=True)
    return out


def bench_torch(args, peak: float) -> list[dict]:
    try:
        from benchmarks import torch_reference
    except ImportError as e:  # The `bench` extra is not installed.
        print(f"skipping the torch comparison: {e}", flush=True)
        return []
    rows = []
    for size in (8, 28):
        config = family_config("fashion_mnist", "gradient", 10)
        config.match.augment = "none"
        config.model.depth, config.model.width = 3, 128
        config.cluster.num_clusters, config.match.num_real = 4, 64
        config.match.group_batch = 0  # All 40 groups in one vmap: the fastest here.
        model, real, state = problem(config, (size, size, 1))
        stem_pad = build.stem_pad(config, (size, size, 1))  # Torch builds the same network.
        objective, obj_args = _objective(config, model, state, real)
        timer = harness.Timer()
        compiled = objective.lower(*obj_args).compile()
        compile_s = timer()
        jax_s, _ = harness.timed(compiled, *obj_args, repeats=args.repeats)
        sys_s, faults = harness.host_cost(compiled, *obj_args)
        flops = float(compiled.cost_analysis()["flops"])
        ref = torch_reference.time_step(
            image_shape=(size, size, 1), num_classes=10, num_clusters=4, num_real=64, ipc=10,
            width=128, depth=3, alpha=config.robust.alpha, repeats=args.repeats,
            stem_pad=stem_pad,
        )  # fmt: skip
        rows.append(
            {
                "image_shape": [size, size, 1],
                "stem_pad": stem_pad,
                "jaxdd_s": jax_s,
                "jaxdd_compile_s": compile_s,
                "jaxdd_sys_s": sys_s,
                "jaxdd_page_faults": faults,
                "flops": flops,
                # The step's FLOPs at this run's dense-matmul peak: no f32 formulation is faster.
                "peak_floor_s": flops / peak,
                "torch_s": ref["median_s"],
                "torch_threads": ref["threads"],
                "torch": ref["torch"],
                "speedup": ref["median_s"] / jax_s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_memory(args) -> list[dict]:
    rows = []
    for steps in (10, 20, 40, 80):
        row = {"T": steps}
        for remat in matching.REMATS:
            config = family_config("svhn", "risk", 10)
            config.match.unroll_steps = steps
            model, real, state = problem(config, (32, 32, 3))
            objective, obj_args = _objective(config, model, state, real, remat=remat)
            row[remat] = harness.compiled_memory_bytes(objective.lower(*obj_args).compile())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_eval(args) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for shape_name in args.shapes.split(","):
        image_shape = SHAPES[shape_name]
        config = harness.load_config(shape_name)
        model = build.create_model(config, 10, image_shape)
        test = jnp.asarray(rng.normal(size=(10_000, *image_shape)), jnp.float32)
        for ipc in (int(i) for i in args.large_ipcs.split(",")):
            images = jnp.asarray(rng.normal(size=(10 * ipc, *image_shape)), jnp.float32)
            labels = jnp.arange(10 * ipc) % 10
            keys = jax.random.split(jax.random.key(0), args.eval_models)
            row = {
                "shape": shape_name,
                "image_shape": list(image_shape),
                "ipc": ipc,
                "models": args.eval_models,
                "epochs": args.eval_epochs,
                "augment": config.eval.augment,
            }
            params = {}
            for vectorize in (True, False):
                train = functools.partial(
                    retrain.train_models,
                    model,
                    images,
                    labels,
                    keys=keys,
                    epochs=args.eval_epochs,
                    batch_size=config.eval.batch_size,
                    augment=config.eval.augment,
                    vectorize=vectorize,
                )
                name = "vmap" if vectorize else "map"
                timer = harness.Timer()
                params[name] = jax.block_until_ready(train())  # Compiles, then trains.
                row[f"{name}_train_first_s"] = timer()
                row[f"{name}_train_s"] = harness.wall(train)
                predict = functools.partial(
                    retrain.predict, model, params[name], test, vectorize=vectorize
                )
                row[f"{name}_predict_first_s"] = harness.wall(predict)
                row[f"{name}_predict_s"] = harness.wall(predict)
            row["max_param_diff"] = max(
                jax.tree.leaves(
                    jax.tree.map(
                        lambda a, b: float(jnp.max(jnp.abs(a - b))), params["vmap"], params["map"]
                    )
                )
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def render(results: dict, out: pathlib.Path) -> str:
    """The .md of `results` (the .json): tables only, linking `<out>_findings.md`."""
    gib = lambda b: f"{b / 2**30:.2f}"
    lines = [
        "# Step time and memory",
        "",
        "Commands: "
        + "; ".join(
            f"`{command}` ({', '.join(k for k, c in results['sections'].items() if c == command)})"
            for command in dict.fromkeys(results["sections"].values())
        )
        + "  ",
        f"Machine: {harness.machine_header(results['machine'])}; "
        + f"dense f32 matmul peak measured in this run: {results['peak'] / 1e9:.0f} GFLOP/s"
        + (
            f" (bf16 inputs with f32 accumulation: {results['peak_bf16'] / 1e9:.0f} GFLOP/s)"
            if "peak_bf16" in results
            else ""
        )
        + ".  ",
    ]
    if "wall_s" in results:
        lines.append(f"Wall time of this invocation: {results['wall_s'] / 60:.1f} min.  ")
    lines += ["", *harness.findings_link(out)]
    if results.get("steps"):
        lines += [
            "## Full distillation step (shipped configs, mock data of the datasets' shapes)",
            "",
            "| data | family | IPC | groups C x K x m | model | inner steps | compile s | "
            "step s (median) | GFLOP/step | XLA GFLOP | GFLOP/s | of peak | memory GiB |",
            "|---" * 13 + "|",
        ]
        for r in results["steps"]:
            lines.append(
                f"| {r['shape']} {'x'.join(map(str, r['image_shape']))} | {r['family']} | "
                f"{r['ipc']} | {r['groups']} | {r['model']} | "
                f"{r.get('inner_loop', r.get('net_train_steps'))} | "
                f"{r['compile_s']:.1f} | {r['step_s']:.3f} | {r['flops'] / 1e9:.1f} | "
                f"{r['xla_flops'] / 1e9:.1f} | {r['flops_per_s'] / 1e9:.1f} | "
                f"{100 * r['peak_fraction']:.0f}% | {gib(r['memory_bytes'])} |"
            )
        lines.append("")
    if results.get("scaling"):
        s = results["scaling"]
        lines += [
            "## Scaling of the gradient family's objective (digits 8x8, ConvNet-128 depth 2, "
            "C = 10, m = 32, IPC 10)",
            "",
            "| K | real images | s |",
            "|---|---|---|",
        ]
        lines += [f"| {r['K']} | {r['real_images']} | {r['s']:.3f} |" for r in s["clusters"]]
        g = s["grouped"]
        lines += [
            "",
            f"Same 2560 real images: 10 x 4 groups of 64 take {g['grouped']:.3f} s, one group "
            f"of 256 per class {g['ungrouped']:.3f} s: ratio {g['ratio']:.2f} (target < 2).",
            "",
        ]
    if results.get("torch"):
        lines += [
            "## Against PyTorch eager (the field's per-class, per-cluster loops)",
            "",
            "Robust (CVaR) gradient-matching objective and its gradient w.r.t. the synthetic "
            "images: ConvNet-128 depth 3, 10 classes x 4 clusters x 64 real, IPC 10, no DSA; "
            "both sides with the shipped configs' first-layer padding (`stem pad`: DC's "
            "padding-3 first conv on 1-channel images is 2; rows without it predate it, 0).",
            "",
            "| image | stem pad | jaxdd s | jaxdd compile s | torch s | torch threads | "
            "jaxdd speed-up | XLA GFLOP | at f32 matmul peak s | 2x target s | "
            "jaxdd kernel CPU s | jaxdd page faults |",
            "|---" * 12 + "|",
        ]
        for r in results["torch"]:
            floor = f"{r['flops'] / 1e9:.1f} | {r['peak_floor_s']:.3f}" if "flops" in r else " | "
            host = (
                f"{r['jaxdd_sys_s']:.2f} | {r['jaxdd_page_faults']:,.0f}"
                if "jaxdd_sys_s" in r
                else " | "
            )
            lines.append(
                f"| {'x'.join(map(str, r['image_shape']))} | {r.get('stem_pad', 0)} | "
                f"{r['jaxdd_s']:.3f} | "
                f"{r['jaxdd_compile_s']:.1f} | {r['torch_s']:.3f} | {r['torch_threads']} | "
                f"{r['speedup']:.2f}x | {floor} | {r['torch_s'] / 2:.3f} | {host} |"
            )
        lines.append("")
    if results.get("memory"):
        lines += [
            "## Risk family: compiled memory of the unrolled objective vs T (svhn 32x32x3, "
            "IPC 10, GiB)",
            "",
            "| T | " + " | ".join(f"remat={r}" for r in matching.REMATS) + " |",
            "|---" * (len(matching.REMATS) + 1) + "|",
        ]
        for r in results["memory"]:
            lines.append(
                f"| {r['T']} | " + " | ".join(gib(r[name]) for name in matching.REMATS) + " |"
            )
        lines.append("")
    if results.get("eval"):
        lines += [
            "## Evaluation: M networks trained on the set, then 10,000 test predictions "
            "(vmapped vs mapped in turn)",
            "",
            "| data | IPC | M | epochs | augment | train s vmap (first) | train s map (first) | "
            "predict s vmap | predict s map | max param diff |",
            "|---" * 10 + "|",
        ]
        for r in results["eval"]:
            lines.append(
                f"| {r['shape']} {'x'.join(map(str, r['image_shape']))} | {r['ipc']} | "
                f"{r['models']} | {r['epochs']} | {r['augment']} | "
                f"{r['vmap_train_s']:.1f} ({r['vmap_train_first_s']:.1f}) | "
                f"{r['map_train_s']:.1f} ({r['map_train_first_s']:.1f}) | "
                f"{r['vmap_predict_s']:.2f} | {r['map_predict_s']:.2f} | "
                f"{r['max_param_diff']:.1e} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="steps,scaling,torch,memory")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--ipcs", default="1,10,50", help="IPCs on digits")
    parser.add_argument("--large-ipcs", default="1,10,50", help="IPCs at 28x28 and 32x32")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps at 8x8")
    parser.add_argument("--repeats-large", type=int, default=2, help="timed steps, 28/32 px")
    parser.add_argument("--eval-models", type=int, default=3, help="networks, eval section")
    parser.add_argument("--eval-epochs", type=int, default=30, help="epochs, eval section")
    parser.add_argument("--out", default=str(harness.RESULTS / "step_time"))
    parser.add_argument(
        "--recount", action="store_true", help="recompute the FLOPs of the recorded steps only"
    )
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    unknown = set(args.sections.split(",")) - {"steps", "scaling", "torch", "memory", "eval"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    out = pathlib.Path(args.out)
    path, command = out.with_suffix(".json"), harness.command("step_time")
    if args.render:
        results = harness.load_results(path, None)
        if results is None:
            parser.error(f"--render needs {path}; run a section first.")
    elif args.recount:
        results = harness.load_results(path, {})
        recount(results)
        results = harness.merge_results(
            path, {"steps": results.get("steps", []), "sections": {"FLOPs of steps": command}}
        )
    else:
        results = harness.merge_results(path, run_sections(args, command))
    out.with_suffix(".md").write_text(render(results, out))
    print(render(results, out))


def run_sections(args: argparse.Namespace, command: str) -> dict:
    """The header (machine, matmul peaks, command) and every section of `args.sections`."""
    timer = harness.Timer()
    sections = args.sections.split(",")
    results = {
        "machine": harness.machine(),
        "peak": matmul_peak(),
        "peak_bf16": matmul_peak(dtype=jnp.bfloat16),
        "command": command,
        "sections": {k: command for k in sections},
    }
    print(
        f"matmul peak {results['peak'] / 1e9:.1f} GFLOP/s f32, "
        f"{results['peak_bf16'] / 1e9:.1f} bf16 (f32 accumulation)",
        flush=True,
    )
    for name, fn in (
        ("steps", lambda: bench_steps(args, results["peak"])),
        ("scaling", lambda: bench_scaling(args)),
        ("torch", lambda: bench_torch(args, results["peak"])),
        ("memory", lambda: bench_memory(args)),
        ("eval", lambda: bench_eval(args)),
    ):
        if name in sections:
            results[name] = fn()
    results["wall_s"] = timer()
    return results


if __name__ == "__main__":
    main()
