"""Cortical sheets: unit positions (in mm) on a simulated 2-D cortex, with precomputed neighbourhoods.

A :class:`CorticalSheet` holds, for one layer of a network, the position of every unit (the layer's activations
after the batch axis, flattened in ``torch.flatten`` order) on a square sheet ``[0, side_mm]²``, and a table of
neighbourhoods: rows of unit indices that lie inside one square window of ``neighbourhood_width_mm``. The spatial
loss samples rows of that table at every step (DESIGN §3).

Layouts and their initial positions:

* convolutional (B, C, H, W) or (B, C, T, H, W) activations, units in C·H·W order:
  :meth:`CorticalSheet.retinotopic` (:func:`retinotopic_positions`: the C channels of one H×W location are
  scattered around a retinotopic anchor; time is not a unit axis);
* fully connected (B, N) activations (``nn.Linear``): :meth:`CorticalSheet.linear` (:func:`uniform_positions`:
  uniform on the sheet, as such units see the whole input);
* tokens (B, L, D) (vision transformers), units in L·D order, unit ``l·D + d``: :meth:`CorticalSheet.tokens`
  (:func:`token_positions`: class/register tokens first, uniform on the sheet; then the patch tokens in row-major
  patch order, whose D channels are scattered around the patch's retinotopic anchor as the C channels of one
  location are by :func:`retinotopic_positions`).

Every position lies inside the sheet, ``0 <= x, y <= side_mm``. A unit outside would never fall in a neighbourhood
window (no spatial loss) and the swap would never move it, so every constructor raises a ValueError instead
(:func:`check_positions_inside`). Only float rounding is forgiven: positions up to ``POSITION_TOLERANCE · side_mm``
outside are clipped onto the sheet's edge when a sheet stores them (as float32).

Files: :meth:`CorticalSheet.save` writes one versioned ``torch.save`` file atomically with the user's umask;
:meth:`CorticalSheet.load` opens it weights-only and raises :class:`~tdann_fast.errors.DamagedFileError` naming the
file when it is empty, truncated, foreign, unsafe or not a sheet.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ._io import atomic_save, safe_load
from ._validation import check_not_complex, check_positive, check_positions
from .errors import DamagedFileError

SHEET_FORMAT = "tdann_fast.CorticalSheet"
SHEET_VERSION = 1
POSITION_TOLERANCE = 1e-6  # positions may lie this fraction of side_mm outside [0, side_mm] (float rounding)

__all__ = [
    "CorticalSheet",
    "sample_neighbourhoods",
    "retinotopic_positions",
    "uniform_positions",
    "token_positions",
    "check_positions_inside",
]


def check_positions_inside(positions: torch.Tensor, side_mm: float, name: str = "positions") -> None:
    """Raise a ValueError naming ``name`` when a row of the finite (N, 2) ``positions`` lies outside the sheet
    ``[0, side_mm]²`` by more than ``POSITION_TOLERANCE · side_mm``; the message gives how many units are outside,
    one of them with its position, and the sheet's extent."""
    tol = POSITION_TOLERANCE * float(side_mm)
    with torch.no_grad():
        p = positions.detach().to("cpu", torch.float64)
        outside = ((p < -tol) | (p > side_mm + tol)).any(dim=1)
        count = int(outside.sum())
        if count == 0:
            return
        unit = int(outside.nonzero()[0, 0])
        x, y = p[unit].tolist()
    raise ValueError(
        f"{name}: {count} of {p.shape[0]} units lie outside the sheet [0, {side_mm:g}] x [0, {side_mm:g}] mm "
        f"(side_mm={side_mm:g}), e.g. unit {unit} at ({x:.9g}, {y:.9g}); units outside the sheet never get a spatial "
        "loss and are never moved by the swap: rescale the positions into the sheet or use a larger side_mm"
    )


def _float32_at_most(value: float) -> float:
    """The largest float32 number <= ``value`` (``value`` itself when float32 holds it)."""
    v32 = np.float32(value)
    if float(v32) > value:
        v32 = np.nextafter(v32, np.float32(-np.inf))
    return float(v32)


def sample_neighbourhoods(
    positions,
    side_mm: float,
    neighbourhood_width_mm: float,
    num_neighbourhoods: int = 20000,
    max_units: int = 500,
    min_units: int = 25,
    percentile: float = 5.0,
    seed: int = 0,
) -> torch.Tensor:
    """Precompute neighbourhoods as in DESIGN §3.

    Draw ``num_neighbourhoods`` square windows of side ``neighbourhood_width_mm`` whose centres are uniform such
    that the window lies inside ``[0, side_mm]²``; keep the windows holding at least ``max(percentile-th
    percentile of the counts, min_units)`` units; subsample every kept window without replacement to
    ``M = min(that threshold, max_units)`` units (indices sorted ascending within a row).

    Returns an int64 tensor (K, M). Deterministic for a given ``seed``.
    """
    pos = check_positions(positions, "positions")
    side_mm = check_positive(side_mm, "side_mm")
    check_positions_inside(pos, side_mm, "positions")
    pos = pos.detach().cpu().double().numpy()
    check_positive(neighbourhood_width_mm, "neighbourhood_width_mm")
    if neighbourhood_width_mm > side_mm:
        raise ValueError(
            f"neighbourhood_width_mm ({neighbourhood_width_mm}) must not exceed the sheet side side_mm ({side_mm})"
        )
    for value, name in ((num_neighbourhoods, "num_neighbourhoods"), (max_units, "max_units")):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(min_units, (int, np.integer)) or min_units < 2:
        raise ValueError(f"min_units must be an integer >= 2, got {min_units!r}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")

    rng = np.random.default_rng(seed)
    half = neighbourhood_width_mm / 2.0
    centres = rng.uniform(half, side_mm - half, size=(int(num_neighbourhoods), 2))
    # Units sorted by x: every window's candidates are one contiguous slice (a vertical strip); filter by y.
    order = np.argsort(pos[:, 0], kind="stable")
    xs, ys = pos[order, 0], pos[order, 1]
    lo = np.searchsorted(xs, centres[:, 0] - half, side="left")
    hi = np.searchsorted(xs, centres[:, 0] + half, side="right")
    counts = np.empty(len(centres), dtype=np.int64)
    for w, (a, b) in enumerate(zip(lo, hi)):
        counts[w] = np.count_nonzero(np.abs(ys[a:b] - centres[w, 1]) <= half)

    threshold = max(int(np.floor(np.percentile(counts, percentile))), int(min_units))
    keep = np.flatnonzero(counts >= threshold)
    if keep.size == 0:
        raise ValueError(
            f"no neighbourhood window of width {neighbourhood_width_mm} mm holds min_units={min_units} units "
            f"(largest window holds {int(counts.max())}); use a larger neighbourhood_width_mm or a smaller min_units"
        )
    m = min(threshold, int(max_units))
    rows = np.empty((keep.size, m), dtype=np.int64)
    for r, w in enumerate(keep):
        a, b = lo[w], hi[w]
        members = order[a:b][np.abs(ys[a:b] - centres[w, 1]) <= half]
        pick = members if members.size == m else rng.choice(members, size=m, replace=False)
        rows[r] = np.sort(pick)
    return torch.from_numpy(rows)


def _check_count(value, name: str, minimum: int = 1) -> int:
    """An integer (not a bool) >= ``minimum``; the error names ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _on_sheet(xy: np.ndarray, side_mm: float) -> torch.Tensor:
    """float64 positions in ``[0, side_mm]²`` → float32, clipped to the float32 sheet (float32 may round
    ``side_mm`` up; the largest float32 not above it keeps every position inside)."""
    xy = xy.astype(np.float32)
    return torch.from_numpy(np.clip(xy, np.float32(0), np.float32(_float32_at_most(side_mm))))


def uniform_positions(num_units: int, side_mm: float, seed: int = 0) -> torch.Tensor:
    """Positions (num_units, 2) float32, independent and uniform on the sheet ``[0, side_mm]²``.

    The initial positions of a fully connected layer: its units see the whole input, so there is no retinotopy.
    Deterministic for a given ``seed`` (a non-negative integer).
    """
    num_units = _check_count(num_units, "num_units")
    side_mm = check_positive(side_mm, "side_mm")
    seed = _check_count(seed, "seed", minimum=0)
    return _on_sheet(np.random.default_rng(seed).uniform(0.0, side_mm, size=(num_units, 2)), side_mm)


def token_positions(
    grid_h: int,
    grid_w: int,
    dim: int,
    side_mm: float,
    class_tokens: int = 1,
    overlap: float = 1.0,
    jitter: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Initial positions (L·D, 2) float32 of a token layer's units, L = class_tokens + grid_h·grid_w, D = dim.

    Units are in token-major L·D order (the ``torch.flatten`` order of (B, L, D) activations): unit ``l·D + d``
    is channel d of token l. Tokens ``0 .. class_tokens-1`` are class/register tokens (torchvision's ViT puts its
    class token at index 0): they see the whole image, so their channels are uniform on the sheet. The patch
    tokens follow in row-major patch order (token ``class_tokens + row·grid_w + col``); patch (row, col) is a
    retinotopic anchor and its D channels are scattered around it exactly as :func:`retinotopic_positions`
    scatters the C channels of one location of a (C, H=grid_h, W=grid_w) layer (``overlap``, ``jitter``).
    ``class_tokens = 0`` gives the patch tokens only. Deterministic for a given ``seed`` (a non-negative integer).
    """
    grid_h, grid_w = _check_count(grid_h, "grid_h"), _check_count(grid_w, "grid_w")
    dim = _check_count(dim, "dim")
    side_mm = check_positive(side_mm, "side_mm")
    class_tokens = _check_count(class_tokens, "class_tokens", minimum=0)
    seed = _check_count(seed, "seed", minimum=0)
    # (dim, grid_h, grid_w) in C·H·W order → (grid_h·grid_w, dim): token-major, channels within a token
    patches = retinotopic_positions(dim, grid_h, grid_w, side_mm, overlap=overlap, jitter=jitter, seed=seed)
    patches = patches.reshape(dim, grid_h * grid_w, 2).transpose(0, 1).reshape(-1, 2)
    if class_tokens == 0:
        return patches.contiguous()
    # another stream of the same seed: the class tokens' draws do not repeat the patch channels' scatter
    rng = np.random.default_rng([seed, 1])
    classes = _on_sheet(rng.uniform(0.0, side_mm, size=(class_tokens * dim, 2)), side_mm)
    return torch.cat([classes, patches], dim=0)


def retinotopic_positions(
    channels: int,
    height: int,
    width: int,
    side_mm: float,
    overlap: float = 1.0,
    jitter: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Retinotopic initial positions (N = channels·height·width, 2) in C·H·W order (DESIGN §4).

    The H×W spatial locations are anchors on a regular grid spanning the sheet (row → y, column → x). The
    channels of one location are scattered uniformly inside a square around their anchor whose side is
    ``overlap`` times the anchor spacing (1.0: the squares tile the sheet; > 1: neighbouring squares overlap),
    plus Gaussian jitter of standard deviation ``jitter`` × the anchor spacing. Finally each axis is rescaled to
    ``[0, side_mm]`` (in float64, then rounded to float32 and clipped to the float32 sheet: inside the sheet by
    construction).
    """
    for value, name in ((channels, "channels"), (height, "height"), (width, "width")):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_positive(side_mm, "side_mm")
    check_positive(overlap, "overlap")
    check_not_complex(jitter, "jitter")
    if not (jitter >= 0 and math.isfinite(jitter)):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter!r}")
    rng = np.random.default_rng(seed)
    shape = (channels, height, width)
    anchor_x = ((np.arange(width) + 0.5) / width)[None, None, :]
    anchor_y = ((np.arange(height) + 0.5) / height)[None, :, None]
    x = anchor_x + (rng.uniform(-0.5, 0.5, size=shape) * overlap + rng.normal(0.0, jitter, size=shape)) / width
    y = anchor_y + (rng.uniform(-0.5, 0.5, size=shape) * overlap + rng.normal(0.0, jitter, size=shape)) / height

    def rescale(v):
        lo, hi = v.min(), v.max()
        if hi - lo <= 0:
            return np.full_like(v, side_mm / 2.0)
        return (v - lo) / (hi - lo) * side_mm

    # (v - lo) / (hi - lo) lies in [0, 1] in float64 (rounding is monotonic and x / x == 1), but side_mm itself may
    # round up in float32: _on_sheet clips to the largest float32 not above side_mm so that no position leaves it.
    return _on_sheet(np.stack([rescale(x).reshape(-1), rescale(y).reshape(-1)], axis=1), side_mm)


class CorticalSheet:
    """Positions of one layer's units on a square cortical sheet, plus precomputed neighbourhoods.

    Args:
        positions: (N, 2) unit positions in mm (x, y), N units in torch.flatten order (C·H·W, N or L·D).
        side_mm: side of the square sheet in mm; positions lie in ``[0, side_mm]²``.
        neighbourhood_width_mm: side of the square neighbourhood windows in mm.
        neighbourhoods: optional int64 (K, M) table of unit indices; computed with default settings when None.
        shape: optional unit shape of the layer this sheet belongs to, (C, H, W), (N,) or (L, D) (checked
            against N).

    Builders: :meth:`retinotopic` (convolutional layers), :meth:`linear` (fully connected layers), :meth:`tokens`
    (token layers of vision transformers).
    """

    def __init__(
        self,
        positions,
        side_mm: float,
        neighbourhood_width_mm: float,
        neighbourhoods=None,
        shape: Optional[Sequence[int]] = None,
    ):
        positions = check_positions(positions, "positions")
        self.side_mm = float(check_positive(side_mm, "side_mm"))
        check_positions_inside(positions, self.side_mm, "positions")
        # a copy (never the caller's tensor), with rounding-level excursions clipped onto the sheet's edge
        self.positions = positions.detach().to(torch.float32).clamp(0.0, _float32_at_most(self.side_mm))
        self.neighbourhood_width_mm = float(check_positive(neighbourhood_width_mm, "neighbourhood_width_mm"))
        n = self.positions.shape[0]
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            if int(np.prod(shape)) != n:
                raise ValueError(f"shape {shape} holds {int(np.prod(shape))} units but positions has {n} rows")
        self.shape: Optional[Tuple[int, ...]] = shape
        if neighbourhoods is None:
            neighbourhoods = sample_neighbourhoods(self.positions, self.side_mm, self.neighbourhood_width_mm)
        self.neighbourhoods = self._check_neighbourhoods(neighbourhoods, n).to(self.positions.device)

    @staticmethod
    def _check_neighbourhoods(neighbourhoods, n: int) -> torch.Tensor:
        nb = torch.as_tensor(neighbourhoods)
        if nb.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"neighbourhoods must be an integer tensor, got dtype {nb.dtype}")
        if nb.dim() != 2 or nb.shape[0] < 1 or nb.shape[1] < 2:
            raise ValueError(f"neighbourhoods must have shape (K >= 1, M >= 2), got {tuple(nb.shape)}")
        lo, hi = int(nb.min()), int(nb.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"neighbourhoods holds unit indices in [{lo}, {hi}], expected indices in [0, {n})")
        return nb.to(torch.int64)

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def retinotopic(
        cls,
        channels: int,
        height: int,
        width: int,
        side_mm: float,
        neighbourhood_width_mm: float,
        overlap: float = 1.0,
        jitter: float = 0.1,
        seed: int = 0,
        num_neighbourhoods: int = 20000,
        max_units: int = 500,
        min_units: int = 25,
        percentile: float = 5.0,
    ) -> "CorticalSheet":
        """A sheet with retinotopic initial positions (see :func:`retinotopic_positions`) and neighbourhoods."""
        positions = retinotopic_positions(channels, height, width, side_mm, overlap=overlap, jitter=jitter, seed=seed)
        return cls._with_neighbourhoods(positions, side_mm, neighbourhood_width_mm, (channels, height, width), seed,
                                        num_neighbourhoods, max_units, min_units, percentile)

    @classmethod
    def linear(
        cls,
        num_units: int,
        side_mm: float,
        neighbourhood_width_mm: float,
        seed: int = 0,
        num_neighbourhoods: int = 20000,
        max_units: int = 500,
        min_units: int = 25,
        percentile: float = 5.0,
    ) -> "CorticalSheet":
        """A sheet for a fully connected layer with (B, num_units) outputs (e.g. ``nn.Linear``): uniform initial
        positions (see :func:`uniform_positions`) and neighbourhoods; ``shape == (num_units,)``."""
        positions = uniform_positions(num_units, side_mm, seed=seed)
        return cls._with_neighbourhoods(positions, side_mm, neighbourhood_width_mm, (num_units,), seed,
                                        num_neighbourhoods, max_units, min_units, percentile)

    @classmethod
    def tokens(
        cls,
        grid_h: int,
        grid_w: int,
        dim: int,
        side_mm: float,
        neighbourhood_width_mm: float,
        class_tokens: int = 1,
        overlap: float = 1.0,
        jitter: float = 0.1,
        seed: int = 0,
        num_neighbourhoods: int = 20000,
        max_units: int = 500,
        min_units: int = 25,
        percentile: float = 5.0,
    ) -> "CorticalSheet":
        """A sheet for a token layer with (B, L, D) outputs, L = class_tokens + grid_h·grid_w, D = dim (e.g. a
        vision-transformer block): initial positions from :func:`token_positions`, and neighbourhoods;
        ``shape == (L, dim)``."""
        positions = token_positions(
            grid_h, grid_w, dim, side_mm, class_tokens=class_tokens, overlap=overlap, jitter=jitter, seed=seed
        )
        return cls._with_neighbourhoods(positions, side_mm, neighbourhood_width_mm,
                                        (class_tokens + grid_h * grid_w, dim), seed, num_neighbourhoods, max_units,
                                        min_units, percentile)

    @classmethod
    def _with_neighbourhoods(cls, positions, side_mm, neighbourhood_width_mm, shape, seed, num_neighbourhoods,
                             max_units, min_units, percentile) -> "CorticalSheet":
        """The builders' last step: the neighbourhood table of ``positions`` (DESIGN §3), then the sheet."""
        neighbourhoods = sample_neighbourhoods(
            positions, side_mm, neighbourhood_width_mm, num_neighbourhoods, max_units, min_units, percentile, seed
        )
        return cls(positions, side_mm, neighbourhood_width_mm, neighbourhoods, shape=shape)

    def compute_neighbourhoods(
        self,
        num_neighbourhoods: int = 20000,
        max_units: int = 500,
        min_units: int = 25,
        percentile: float = 5.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """Neighbourhood table (K, M) for the current positions (DESIGN §3); does not modify the sheet."""
        nb = sample_neighbourhoods(
            self.positions, self.side_mm, self.neighbourhood_width_mm, num_neighbourhoods, max_units, min_units,
            percentile, seed,
        )
        return nb.to(self.positions.device)

    def with_positions(self, positions, **neighbourhood_kwargs) -> "CorticalSheet":
        """A new sheet with ``positions`` (same unit count) and neighbourhoods recomputed for them."""
        positions = check_positions(positions, "positions", num_units=self.num_units)
        nb = sample_neighbourhoods(positions, self.side_mm, self.neighbourhood_width_mm, **neighbourhood_kwargs)
        return CorticalSheet(positions, self.side_mm, self.neighbourhood_width_mm, nb, shape=self.shape).to(
            self.positions.device
        )

    # ------------------------------------------------------------------------------------------- properties
    @property
    def num_units(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_neighbourhoods(self) -> int:
        return int(self.neighbourhoods.shape[0])

    @property
    def neighbourhood_size(self) -> int:
        return int(self.neighbourhoods.shape[1])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def to(self, device) -> "CorticalSheet":
        """A sheet whose tensors live on ``device`` (tensors are shared when already there)."""
        out = object.__new__(CorticalSheet)
        out.positions = self.positions.to(device)
        out.neighbourhoods = self.neighbourhoods.to(device)
        out.side_mm, out.neighbourhood_width_mm, out.shape = self.side_mm, self.neighbourhood_width_mm, self.shape
        return out

    def clone(self) -> "CorticalSheet":
        out = self.to(self.device)
        out.positions, out.neighbourhoods = self.positions.clone(), self.neighbourhoods.clone()
        return out

    def __repr__(self) -> str:
        return (
            f"CorticalSheet(units={self.num_units}, shape={self.shape}, side_mm={self.side_mm:g}, "
            f"neighbourhood_width_mm={self.neighbourhood_width_mm:g}, neighbourhoods={tuple(self.neighbourhoods.shape)})"
        )

    # ------------------------------------------------------------------------------------------ persistence
    def state(self) -> dict:
        """A plain dict (tensors on the CPU, primitives) that :meth:`from_state` turns back into a sheet. The
        tensors are copies: changing them does not change the sheet."""
        return {
            "format": SHEET_FORMAT,
            "version": SHEET_VERSION,
            "positions": self.positions.detach().to("cpu", copy=True),
            "neighbourhoods": self.neighbourhoods.detach().to("cpu", copy=True),
            "side_mm": self.side_mm,
            "neighbourhood_width_mm": self.neighbourhood_width_mm,
            "shape": list(self.shape) if self.shape is not None else None,
        }

    @classmethod
    def from_state(cls, state: dict) -> "CorticalSheet":
        if not isinstance(state, dict) or state.get("format") != SHEET_FORMAT:
            raise ValueError("state is not a saved CorticalSheet (missing or wrong 'format' field)")
        if state.get("version") != SHEET_VERSION:
            raise ValueError(f"unsupported CorticalSheet file version {state.get('version')!r}; expected {SHEET_VERSION}")
        missing = [k for k in ("positions", "side_mm", "neighbourhood_width_mm", "neighbourhoods", "shape")
                   if k not in state]
        if missing:
            raise ValueError(f"state is not a complete CorticalSheet: missing fields {missing}")
        return cls(
            state["positions"], state["side_mm"], state["neighbourhood_width_mm"], state["neighbourhoods"],
            shape=state["shape"],
        )

    def save(self, path) -> None:
        """Write the sheet to one versioned file, atomically (:func:`tdann_fast._io.atomic_save`: temp file in the
        same folder, fsync, rename, fsync of the folder; permissions ``0o666`` less the umask)."""
        atomic_save(self.state(), path)

    @classmethod
    def load(cls, path, map_location="cpu") -> "CorticalSheet":
        """A sheet saved by :meth:`save`. Opened weights-only (no code runs); a file that is empty, truncated,
        foreign, unsafe or holds no valid sheet raises :class:`~tdann_fast.errors.DamagedFileError` naming it."""
        state = safe_load(path, "sheet", map_location=map_location)
        if not isinstance(state, dict) or state.get("format") != SHEET_FORMAT:
            found = (f"its 'format' field is {state.get('format')!r}" if isinstance(state, dict)
                     else f"it holds a {type(state).__name__}")
            raise DamagedFileError(path, f"not a saved CorticalSheet: {found}, expected format {SHEET_FORMAT!r}")
        try:
            return cls.from_state(state)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise DamagedFileError(path, f"not a valid CorticalSheet file: {exc}") from None
