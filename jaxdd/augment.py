"""Differentiable siamese augmentation (DSA, Zhao & Bilen, ICML 2021).

Pure functions of `(images, key)` on NHWC batches. Every transform is differentiable with
respect to the pixel values (each is in fact affine in them); the random parameters are drawn
from `key` and carry no gradient.

Siamese mode (`batch_shared=True`) draws ONE set of random parameters for the whole batch and
broadcasts it, so `augment(real, key)` and `augment(syn, key)` apply the identical transform to
both batches even when their sizes differ (DSA's `Siamese` flag: `randf[:] = randf[0]`).
`batch_shared=False` draws parameters per image, as used when training evaluation networks.

Transform families and their DSA default ranges:
  color:  brightness `x + (u - 0.5) * 1.0`, then saturation `(x - mean_c) * 2u + mean_c`, then
          contrast `(x - mean_hwc) * (u + 0.5) + mean_hwc` (u ~ U(0, 1) each).
  crop:   integer translation by up to `round(0.125 * size)` pixels per axis, zero fill.
  cutout: a `round(0.5 * H) x round(0.5 * W)` square zeroed at a random centre.
  flip:   horizontal mirror with probability 0.5.
  scale:  independent x / y scales in U(1/1.2, 1.2) via an affine sampling grid.
  rotate: rotation by U(-15, 15) degrees via an affine sampling grid.
Affine transforms follow PyTorch's `affine_grid` / `grid_sample(align_corners=True)` used by
DSA: bilinear interpolation, zeros outside the image.

Single mode (DSA's default) runs without a `lax.switch`: each family is linear in the pixels,
so the drawn one is applied as color-or-identity, one bilinear read at the drawn geometric
family's coordinates (or the pixel grid, an exact copy), then cutout-or-identity, all from one
random draw (each family reads the prefix it needs: the values its own `rand_*` draws). For
siamese batches of up to `DENSE_SAMPLING_MAX_PIXELS` pixels the read is one matmul with a
sampling matrix. Same result as the drawn family alone (tested), with a smaller program: the
distillation step compiled 1-2 s faster, and under `vmap` over per-class keys a switch
evaluated every branch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "DEFAULT_STRATEGY",
    "IDC_ALWAYS",
    "MODES",
    "TRANSFORMS",
    "affine_sample",
    "augment",
    "erase",
    "parse_strategy",
    "rand_color",
    "rand_crop",
    "rand_cutout",
    "rand_flip",
    "rand_rotate",
    "rand_scale",
    "sample",
    "sampling_matrix",
    "translate",
]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
MODES = ("single", "all", "idc")
# IDC's evaluation augmentation (`DiffAug`, snu-mllab/Efficient-Dataset-Condensation
# misc/augment.py 7-82): these families are applied on every call when listed (flip, then
# color, ..., cutout last), and one of the others is drawn per call between color and cutout.
IDC_ALWAYS = ("flip", "color", "cutout")

# DSA's ParamDiffAug defaults.
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5
CROP_PAD_RATIO = 0.125
CUTOUT_RATIO = 0.5
FLIP_PROB = 0.5
SCALE_RATIO = 1.2
ROTATE_DEGREES = 15.0
# Single-mode siamese DSA reads images of up to this many pixels through one dense
# (pixels x pixels) sampling matrix (`sampling_matrix`): 32 x 32 -> 4 MiB, about 2 MFLOP per
# pixel of every channel. Larger images use gathers.
DENSE_SAMPLING_MAX_PIXELS = 32 * 32


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (4-D), got shape {images.shape}.")


# U(0, 1) parameters each family draws per image.
_PARAMETERS = {"color": 3, "crop": 2, "cutout": 2, "flip": 1, "scale": 2, "rotate": 1}


def _draw(key: jax.Array, count: int, n: int, batch_shared: bool) -> jax.Array:
    """`count` U(0, 1) parameters, shape (count, 1) when shared by the batch, else (count, n).

    One threefry call per draw: every call is compiled separately, so families draw all their
    parameters at once. The parameters of a shorter draw from the same key are a prefix of a
    longer one's (jax's default `jax_threefry_partitionable` counts elements in row-major
    order), which lets `augment`'s single mode draw once for every family.
    """
    return jax.random.uniform(key, (count,) if batch_shared else (count, n)).reshape(count, -1)


def _uniforms(key: jax.Array, count: int, n: int, batch_shared: bool) -> jax.Array:
    """`_draw` broadcast to (count, n). A shared draw has shape (count,) whatever the batch
    size: that is what gives two batches of different sizes identical parameters from the
    same key."""
    return jnp.broadcast_to(_draw(key, count, n, batch_shared), (count, n))


def _scaled(u: jax.Array, minval: float, maxval: float) -> jax.Array:
    return minval + u * (maxval - minval)


def _integers(u: jax.Array, minval: int, maxval: int) -> jax.Array:
    """Uniform integers in [minval, maxval) from U(0, 1) draws."""
    return jnp.clip(jnp.floor(_scaled(u, minval, maxval)).astype(jnp.int32), minval, maxval - 1)


# ---------------------------------------------------------------------------------------------
# Deterministic primitives (per-image parameters given explicitly).


def translate(images: jax.Array, shifts: jax.Array, *, max_shift: tuple[int, int]) -> jax.Array:
    """Shifts each image by integer `shifts` (N, 2) = (dy, dx): `out[i, j] = x[i + dy, j + dx]`,
    zero where that falls outside the image. `|shifts| <= max_shift` per axis is required.
    """
    _check_images(images)
    ph, pw = max_shift
    padded = jnp.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    _, h, w, c = images.shape

    def one(image: jax.Array, shift: jax.Array) -> jax.Array:
        start = (shift[0] + ph, shift[1] + pw, 0)
        return jax.lax.dynamic_slice(image, start, (h, w, c))

    return jax.vmap(one)(padded, shifts)


def erase(images: jax.Array, starts: jax.Array, *, size: tuple[int, int]) -> jax.Array:
    """Zeros, per image, the `size` rectangle whose top-left corner is `starts` (N, 2) = (row,
    col); the rectangle may hang over the border (the part outside is ignored).
    """
    _check_images(images)
    _, h, w, _ = images.shape
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    r0, c0 = starts[:, :1], starts[:, 1:]
    in_rows = (rows >= r0) & (rows < r0 + size[0])  # (N, H)
    in_cols = (cols >= c0) & (cols < c0 + size[1])  # (N, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return images * keep[..., None].astype(images.dtype)


def sample(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Reads each image at (fractional) pixel coordinates, bilinearly, zero outside.

    `out[n, i, j] = x[n, rows[n, i, j], cols[n, i, j]]` with `rows`, `cols` of shape (N, H, W)
    (or broadcastable to it). Integer coordinates copy pixels exactly (the other corners get
    weight 0), so translations and mirrors through `sample` equal their slicing versions.
    """
    _check_images(images)
    n, h, w, _ = images.shape
    rows = jnp.broadcast_to(rows, (n, h, w)).astype(images.dtype)
    cols = jnp.broadcast_to(cols, (n, h, w)).astype(images.dtype)

    def one(image: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
        read = functools.partial(
            jax.scipy.ndimage.map_coordinates, coordinates=[row, col], order=1, mode="constant"
        )
        return jax.vmap(read, in_axes=-1, out_axes=-1)(image)

    return jax.vmap(one)(images, rows, cols)


def sampling_matrix(rows: jax.Array, cols: jax.Array) -> jax.Array:
    """The (H*W, H*W) matrix of the bilinear reads at `rows`, `cols` (H, W) of an H x W image.

    For a batch that shares its coordinates, `sample(x, rows, cols)` equals
    `sampling_matrix(rows, cols) @ x.reshape(N, H*W, C)`: a matmul instead of gathers (and a
    matmul instead of a scatter-add in the gradient), which compiles to a smaller program and
    runs well on every backend. Each row holds at most four non-zero weights; integer
    coordinates give 0/1 rows, so translations and mirrors stay exact copies.
    """
    h, w = rows.shape
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    fr, fc = rows - r0, cols - c0
    sources = jnp.arange(h * w)
    matrix = jnp.zeros((h * w, h * w), rows.dtype)
    for dr, dc, weight in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        r, c = (r0 + dr).astype(jnp.int32), (c0 + dc).astype(jnp.int32)
        valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        hit = valid[:, None] & (sources[None, :] == (r * w + c)[:, None])
        matrix = matrix + jnp.where(hit, weight[:, None], 0.0)
    return matrix


def _read(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """`sample`, through `sampling_matrix` when the batch shares small coordinates."""
    n, h, w, c = images.shape
    if rows.shape[0] != 1 or h * w > DENSE_SAMPLING_MAX_PIXELS:
        return sample(images, rows, cols)
    matrix = sampling_matrix(rows[0].astype(images.dtype), cols[0].astype(images.dtype))
    flat = images.reshape(n, h * w, c)
    # "highest": TPU's default f32 matmul (bf16 passes) would perturb the pixel values.
    return jnp.einsum("pq,nqc->npc", matrix, flat, precision="highest").reshape(images.shape)


def _affine_coordinates(theta: jax.Array, h: int, w: int) -> tuple[jax.Array, jax.Array]:
    """Pixel coordinates (N, H, W) that `affine_sample` reads for the affine maps `theta`."""
    ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
    # Elementwise rather than a matmul: TPU's default matmul precision (bf16 passes) would
    # visibly perturb the sampling coordinates.
    t = theta[:, :, :, None, None]
    src_x = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    src_y = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return (src_y + 1.0) * 0.5 * (h - 1), (src_x + 1.0) * 0.5 * (w - 1)


def affine_sample(images: jax.Array, theta: jax.Array) -> jax.Array:
    """Resamples each image through the affine map `theta` (N, 2, 3), as PyTorch's
    `grid_sample(images, affine_grid(theta, align_corners=True), align_corners=True)`.

    Output pixel with normalised coordinates (x, y) in [-1, 1]^2 (x along width, corners at the
    pixel centres) reads the input at `theta @ (x, y, 1)`, bilinearly, zero outside.
    """
    _check_images(images)
    _, h, w, _ = images.shape
    return sample(images, *_affine_coordinates(theta.astype(images.dtype), h, w))


# ---------------------------------------------------------------------------------------------
# Random transform families: fn(images, key, *, batch_shared) -> images.


def rand_color(images: jax.Array, key: jax.Array, *, batch_shared: bool = True) -> jax.Array:
    """Brightness, saturation and contrast, in DSA's order."""
    _check_images(images)
    return _color(images, _uniforms(key, _PARAMETERS["color"], images.shape[0], batch_shared))


def _color(images: jax.Array, u: jax.Array) -> jax.Array:
    brightness, saturation, contrast = u[:3]
    bcast = lambda v: v[:, None, None, None]
    x = images + bcast(brightness - 0.5) * BRIGHTNESS
    mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean) * bcast(saturation * SATURATION) + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * bcast(contrast + CONTRAST) + mean
    return x


def _crop_shifts(u: jax.Array, h: int, w: int):
    """DSA's crop draw from `u` (2, N): (N, 2) integer shifts (dy, dx) and their bound."""
    max_shift = (int(h * CROP_PAD_RATIO + 0.5), int(w * CROP_PAD_RATIO + 0.5))
    uy, ux = u[:2]
    shifts = jnp.stack(
        [
            _integers(uy, -max_shift[0], max_shift[0] + 1),
            _integers(ux, -max_shift[1], max_shift[1] + 1),
        ],
        axis=-1,
    )
    return shifts, max_shift


def rand_crop(images: jax.Array, key: jax.Array, *, batch_shared: bool = True) -> jax.Array:
    """Random translation by up to 1/8 of each side, zero padded (DSA's `rand_crop`)."""
    _check_images(images)
    n, h, w, _ = images.shape
    u = _uniforms(key, _PARAMETERS["crop"], n, batch_shared)
    shifts, max_shift = _crop_shifts(u, h, w)
    return translate(images, shifts, max_shift=max_shift)


def rand_cutout(images: jax.Array, key: jax.Array, *, batch_shared: bool = True) -> jax.Array:
    """Zeros a half-size square at a random centre (DSA's `rand_cutout`)."""
    _check_images(images)
    return _cutout(images, _uniforms(key, _PARAMETERS["cutout"], images.shape[0], batch_shared))


def _cutout(images: jax.Array, u: jax.Array) -> jax.Array:
    _, h, w, _ = images.shape
    size = (int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5))
    uy, ux = u[:2]
    # DSA's centre range: [0, side + (1 - size % 2)), the square starting size // 2 before it.
    centres = jnp.stack(
        [_integers(uy, 0, h + 1 - size[0] % 2), _integers(ux, 0, w + 1 - size[1] % 2)], axis=-1
    )
    starts = centres - jnp.array([size[0] // 2, size[1] // 2])
    return erase(images, starts, size=size)


def _flip_draw(u: jax.Array) -> jax.Array:
    """(N,) booleans from `u` (1, N): which images DSA's flip mirrors."""
    return u[0] < FLIP_PROB


def rand_flip(images: jax.Array, key: jax.Array, *, batch_shared: bool = True) -> jax.Array:
    """Horizontal mirror with probability 0.5."""
    _check_images(images)
    flip = _flip_draw(_uniforms(key, _PARAMETERS["flip"], images.shape[0], batch_shared))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _scale_theta(u: jax.Array) -> jax.Array:
    sx, sy = _scaled(u[:2], 1.0 / SCALE_RATIO, SCALE_RATIO)
    zero = jnp.zeros_like(sx)
    return jnp.stack(
        [jnp.stack([sx, zero, zero], axis=-1), jnp.stack([zero, sy, zero], axis=-1)], axis=1
    )


def _rotate_theta(u: jax.Array) -> jax.Array:
    limit = ROTATE_DEGREES / 180.0 * math.pi
    angle = _scaled(u[0], -limit, limit)
    cos, sin, zero = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle)
    return jnp.stack(
        [jnp.stack([cos, -sin, zero], axis=-1), jnp.stack([sin, cos, zero], axis=-1)], axis=1
    )


def rand_scale(images: jax.Array, key: jax.Array, *, batch_shared: bool = True) -> jax.Array:
    """Independent x / y scaling by U(1/1.2, 1.2) about the centre."""
    _check_images(images)
    u = _uniforms(key, _PARAMETERS["scale"], images.shape[0], batch_shared)
    return affine_sample(images, _scale_theta(u))


def rand_rotate(images: jax.Array, key: jax.Array, *, batch_shared: bool = True) -> jax.Array:
    """Rotation about the centre by U(-15, 15) degrees."""
    _check_images(images)
    u = _uniforms(key, _PARAMETERS["rotate"], images.shape[0], batch_shared)
    return affine_sample(images, _rotate_theta(u))


def _pixel_grid(h: int, w: int) -> tuple[jax.Array, jax.Array]:
    return jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )


def _crop_coordinates(u, h, w):
    shifts, _ = _crop_shifts(u, h, w)
    rows, cols = _pixel_grid(h, w)
    shifts = shifts.astype(jnp.float32)[:, :, None, None]
    return rows + shifts[:, 0], cols + shifts[:, 1]


def _flip_coordinates(u, h, w):
    rows, cols = _pixel_grid(h, w)
    flip = _flip_draw(u)[:, None, None]
    return jnp.broadcast_to(rows, (u.shape[1], h, w)), jnp.where(flip, (w - 1) - cols, cols)


# The geometric families as the pixel coordinates they read: (u (count, N), H, W) -> rows, cols
# (N, H, W). `augment`'s single mode samples once at the chosen family's coordinates.
_COORDINATES = {
    "crop": _crop_coordinates,
    "flip": _flip_coordinates,
    "scale": lambda u, h, w: _affine_coordinates(_scale_theta(u), h, w),
    "rotate": lambda u, h, w: _affine_coordinates(_rotate_theta(u), h, w),
}


def _single(images: jax.Array, key: jax.Array, families: tuple[str, ...], batch_shared: bool):
    """One family drawn per call (DSA's mode 'S'), without a `lax.switch`.

    Every DSA family is linear in the pixels: color is elementwise, cutout a mask, and the
    geometric ones read the image at other coordinates. So the chosen family is applied as
    color (or identity) -> one bilinear read at the chosen coordinates (the pixel grid itself
    when the choice is not geometric, an exact copy) -> cutout mask (or identity). The result
    equals running the chosen family alone, but the program holds one sampling step instead
    of one branch per family: under `vmap` over per-class keys (a batched choice) a switch runs
    every branch, and it compiles each one and its transpose.
    """
    choice_key, key = jax.random.split(key)
    index = jax.random.randint(choice_key, (), 0, len(families))
    chosen = {name: index == i for i, name in enumerate(families)}
    n, h, w, _ = images.shape
    # One draw for every family (each reads the prefix it needs, as its own `rand_*` would).
    u = _draw(key, max(_PARAMETERS[name] for name in families), n, batch_shared)
    per_image = jnp.broadcast_to(u, (u.shape[0], n))
    x = images
    if "color" in chosen:
        x = jnp.where(chosen["color"], _color(x, per_image), x)
    geometric = [name for name in families if name in _COORDINATES]
    if geometric:
        rows, cols = _pixel_grid(h, w)
        rows, cols = (jnp.broadcast_to(v, (u.shape[1], h, w)) for v in (rows, cols))
        for name in geometric:
            r, c = _COORDINATES[name](u, h, w)
            rows = jnp.where(chosen[name], r, rows)
            cols = jnp.where(chosen[name], c, cols)
        x = _read(x, rows, cols)
    if "cutout" in chosen:
        x = jnp.where(chosen["cutout"], _cutout(x, per_image), x)
    return x


TRANSFORMS: dict[str, Callable[..., jax.Array]] = {
    "color": rand_color,
    "crop": rand_crop,
    "cutout": rand_cutout,
    "flip": rand_flip,
    "scale": rand_scale,
    "rotate": rand_rotate,
}


def without(strategy: str, family: str) -> str:
    """`strategy` without `family` ('none' when nothing is left)."""
    return "_".join(name for name in parse_strategy(strategy) if name != family) or "none"


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Splits a DSA strategy string ('color_crop_flip') into validated family names.

    '' and 'none' (any case) mean no augmentation and give `()`.
    """
    if strategy.strip().lower() in ("", "none"):
        return ()
    names = tuple(strategy.split("_"))
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise ValueError(
            f"Unknown augmentation(s) {unknown} in strategy {strategy!r}; valid names are "
            f"{sorted(TRANSFORMS)} joined by '_', or 'none'."
        )
    return names


def augment(
    images: jax.typing.ArrayLike,
    key: jax.Array,
    *,
    strategy: str = DEFAULT_STRATEGY,
    mode: str = "single",
    batch_shared: bool = True,
) -> jax.Array:
    """Applies DSA to a batch of NHWC images.

    Args:
      images: `(N, H, W, C)` floating-point images.
      key: PRNG key; the same key (with `batch_shared=True`) gives the same transform to any batch.
      strategy: '_'-separated families from `TRANSFORMS` (omit 'flip' for digits), or 'none'.
      mode: 'single' (DSA's default 'S'): one family drawn uniformly per call, the same for the
        whole batch; 'all' (DSA's 'M'): every listed family in order; 'idc' (IDC's
        evaluation `DiffAug`): flip and color when listed, one of the listed families not in
        `IDC_ALWAYS` drawn per call, then cutout when listed.
      batch_shared: one parameter draw for the whole batch (siamese) or one per image.

    Returns:
      `(N, H, W, C)` augmented images, differentiable with respect to `images`.
    """
    families = parse_strategy(strategy)
    if mode not in MODES:
        raise ValueError(f"Unknown augmentation mode {mode!r}; expected one of {MODES}.")
    images = jnp.asarray(images)
    _check_images(images)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point, got dtype {images.dtype}.")
    if not families:
        return images
    if mode == "all":
        for i, name in enumerate(families):
            images = TRANSFORMS[name](images, jax.random.fold_in(key, i), batch_shared=batch_shared)
        return images
    if mode == "idc":
        flip_key, color_key, drawn_key, cutout_key = jax.random.split(key, 4)
        if "flip" in families:
            images = rand_flip(images, flip_key, batch_shared=batch_shared)
        if "color" in families:
            images = rand_color(images, color_key, batch_shared=batch_shared)
        drawn = tuple(name for name in families if name not in IDC_ALWAYS)
        if drawn:
            images = _drawn_one(images, drawn_key, drawn, batch_shared)
        if "cutout" in families:
            images = rand_cutout(images, cutout_key, batch_shared=batch_shared)
        return images
    return _drawn_one(images, key, families, batch_shared)


def _drawn_one(images: jax.Array, key: jax.Array, families: tuple[str, ...], batch_shared: bool):
    """One of `families` drawn per call (DSA's mode 'S')."""
    if len(families) == 1:
        return TRANSFORMS[families[0]](images, jax.random.split(key)[1], batch_shared=batch_shared)
    return _single(images, key, families, batch_shared)
