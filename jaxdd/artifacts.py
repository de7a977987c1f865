"""The files a run writes and reads back: the synthetic set, its image grid, the metrics log.

synthetic.npz     `images` (N, H, W, Ch) in the dataset's normalised space, `labels` (N,),
                  `mean`, `std`, `class_names`, `space`='normalized' (`save_synthetic` /
                  `load_synthetic`; `jaxdd.sets` exports it for PyTorch users);
synthetic.png     the set as an image grid, one row per class (`save_image_grid`);
metrics.jsonl     one JSON object per logged step, mirrored to TensorBoard (`MetricsLog`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data

_SYNTHETIC_FIELDS = ("images", "labels", "mean", "std", "class_names")


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """A saved synthetic set (`load_synthetic`)."""

    images: np.ndarray  # (N, H, W, C) in the dataset's normalised space.
    labels: np.ndarray  # (N,)
    mean: np.ndarray  # (C,) normalisation of the dataset it was distilled from.
    std: np.ndarray
    class_names: tuple[str, ...]

    @property
    def pixels(self) -> np.ndarray:
        """Images in [0, 1] pixel space."""
        return self.images * self.std + self.mean


def save_synthetic(
    path: pathlib.Path,
    images,
    labels,
    dataset: data.Dataset,
    *,
    stored=None,
    param: str = "pixels",
    factor: int = 1,
) -> None:
    """Writes `synthetic.npz`: the normalised training images (what a network trains on),
    labels and the dataset's normalisation; for a factorized set also `stored`, the learned
    `(C, ipc, H, W, Ch)` images they decode from, with `param` and `factor`."""
    extra = {}
    if param != "pixels":
        extra = {"stored": np.asarray(stored, np.float32), "param": param, "factor": factor}
    labels = np.asarray(labels)
    np.savez(
        path,
        images=np.asarray(images, np.float32),
        # (N,) int32 classes, or (N, C) float32 probabilities of learned labels.
        labels=labels.astype(np.float32 if labels.ndim == 2 else np.int32),
        mean=dataset.mean,
        std=dataset.std,
        class_names=np.asarray(dataset.class_names),
        space="normalized",  # How `jaxdd.sets.read` tells it from an npz of pixels.
        **extra,
    )


def load_synthetic(path: str | pathlib.Path) -> Synthetic:
    """Reads `synthetic.npz` (a path to the file or to a run's workdir)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "synthetic.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; pass a run's workdir or its synthetic.npz."
        )
    with np.load(path, allow_pickle=False) as f:
        missing = set(_SYNTHETIC_FIELDS) - set(f.files)
        if missing:
            raise ValueError(f"{path} is not a jaxdd synthetic set: missing {sorted(missing)}.")
        return Synthetic(
            images=f["images"],
            labels=f["labels"],
            mean=f["mean"],
            std=f["std"],
            class_names=tuple(str(n) for n in f["class_names"]),
        )


def image_grid(images: np.ndarray, num_classes: int) -> np.ndarray:
    """Images in [0, 1] pixel space as one uint8 (H', W', C) grid, one row per class."""
    # A one-pixel mid-grey border keeps neighbouring cells apart.
    images = np.pad(
        np.clip(images, 0.0, 1.0), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=0.5
    )
    n, h, w, ch = images.shape
    per_row = n // num_classes
    grid = images.reshape(num_classes, per_row, h, w, ch).transpose(0, 2, 1, 3, 4)
    grid = (grid.reshape(num_classes * h, per_row * w, ch) * 255).round().astype(np.uint8)
    scale = max(1, 256 // max(h, w) // 4)  # Upscale tiny (8x8) images so the grid is legible.
    return np.kron(grid, np.ones((scale, scale, 1), np.uint8))


def save_image_grid(path: pathlib.Path, images: np.ndarray, num_classes: int) -> None:
    """Writes `image_grid(images)` as a PNG."""
    from PIL import Image  # Only the run loop writes images.

    grid = image_grid(images, num_classes)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def scalars(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """The float scalar metrics of a step, as Python floats for logs."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if np.ndim(v) == 0 and jnp.issubdtype(jnp.result_type(v), jnp.floating)
    }


METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """`metrics.jsonl` plus TensorBoard events in `out`, resumable at `start_step`.

    Lines past `start_step` (logged by a run that was killed after its last checkpoint) are
    dropped on opening, and TensorBoard purges events past it, so a resumed log equals an
    uninterrupted one. `elapsed_s` is the distillation wall time the kept lines had logged
    (`elapsed_seconds`), from which a resumed run's clock goes on. Use as a context manager.
    """

    def __init__(self, out: pathlib.Path, *, start_step: int):
        self.path = out / METRICS_FILE
        self.elapsed_s = elapsed_seconds(_truncate(out, after_step=start_step))
        import tensorboardX  # Only a run logs; it imports torch where torch is installed.

        self.writer = tensorboardX.SummaryWriter(str(out / "tensorboard"), purge_step=start_step)
        self._file = open(self.path, "a")  # noqa: SIM115 -- closed in __exit__.

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
        self.writer.close()

    def log(self, record: dict[str, Any], prefix: str = "distill") -> None:
        """Appends `record` (with its 'step') and mirrors its values to TensorBoard."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step":
                self.writer.add_scalar(f"{prefix}/{name}", value, record["step"])


def read_metrics(out: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of `out`'s metrics log, in order ([] when it has none)."""
    path = pathlib.Path(out) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _truncate(out: pathlib.Path, *, after_step: int) -> list[dict[str, Any]]:
    """Drops log lines past the resumed step, so a resumed log equals an uninterrupted one;
    the kept records (rewritten as `MetricsLog.log` wrote them: the same bytes)."""
    kept = [record for record in read_metrics(out) if record.get("step", 0) <= after_step]
    path = out / METRICS_FILE
    if path.exists():
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))
    return kept


def elapsed_seconds(records: list[dict[str, Any]]) -> float:
    """The distillation wall time logged in metrics records (each compile included; the steps a
    killed run lost after its last checkpoint not). `elapsed_s` counts on across resumes;
    logs written before 2026-12-05 restarted it at every resume, so where it falls, the
    segment before it ended and its last value is added."""
    elapsed = [record["elapsed_s"] for record in records if "elapsed_s" in record]
    ends = [a for a, b in zip(elapsed, elapsed[1:], strict=False) if b < a] + elapsed[-1:]
    return float(sum(ends))
