"""Deterministic synthetic EM-like demo volume with a matching label volume.

Used by ``ndfs demo`` to fill the embedded demo dataset. Cells are wobbly
ellipsoids placed with rejection sampling; each voxel belongs to the cell with
the smallest normalised radius (first cell wins ties). The image paints
textured cytoplasm, dark membranes along every label boundary, dark organelle
specks, a streaky neuropil background and shot noise.

Everything is computed plane by plane from (seed, z), so any slab split gives
byte-identical output. Label geometry uses only + - * / sqrt, which are
exactly rounded, so a voxel's label never depends on the window it is
computed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

_FILL = 0.7          # nominal fraction of the volume covered by cells
_SEPARATION = 0.8    # min centre distance as a fraction of summed radii


@dataclass(frozen=True)
class Cell:
    """One blob-shaped cell: label id, geometry in voxels (z, y, x)."""
    id: int
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0     # in-plane rotation of the y/x axes, radians
    wobble: tuple[float, ...] = (0.0,) * 8   # harmonic coefficients, see _rho

    @property
    def reach(self) -> float:
        """Largest normalised radius a voxel of this cell can have (1 + max wobble)."""
        return 1.0 + sum(abs(w) for w in self.wobble)


def _rho(cell: Cell, z: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Normalised wobbly radius of voxels (z, ys[:, None], xs[None, :]); < 1 means inside.

    The surface is |d| = 1 + f, where d is the displacement scaled by the
    radii and f a sum of 2nd/3rd in-plane harmonics (polynomials in d/|d|)
    whose coefficients drift linearly with depth.
    """
    cz, cy, cx = cell.center
    rz, ry, rx = cell.radii
    dz = (z - cz) / rz
    c, s = math.cos(cell.angle), math.sin(cell.angle)
    dy = (ys - cy)[:, None]
    dx = (xs - cx)[None, :]
    v = (dy * c + dx * s) / ry
    u = (dx * c - dy * s) / rx
    n = np.sqrt(u * u + v * v + dz * dz) + 1e-6
    p, q = u / n, v / n
    c2, s2 = p * p - q * q, 2 * p * q
    c3, s3 = p * c2 - q * s2, q * c2 + p * s2
    w = cell.wobble
    f = (w[0] + w[4] * dz) * c2 + (w[1] + w[5] * dz) * s2 \
        + (w[2] + w[6] * dz) * c3 + (w[3] + w[7] * dz) * s3
    return n / (1 + f)


class DemoVolume:
    """Seeded synthetic EM volume: ``labels``/``image`` for any z range, ``slabs`` for all."""

    def __init__(self, shape=(128, 1024, 1024), n_cells=300, seed=0,
                 voxel_size_nm=(40.0, 4.0, 4.0)):
        self.shape = tuple(int(s) for s in shape)
        self.seed = int(seed)
        self.voxel_size_nm = tuple(float(v) for v in voxel_size_nm)
        self._grid: dict[tuple[int, int], tuple] = {}
        self.cells = self._keep_present(self._place(int(n_cells)))
        self._zrange = np.array([self._span(c) for c in self.cells], dtype=np.int64).reshape(-1, 2)
        tone = np.random.default_rng((self.seed, 99)).normal(0, 9, len(self.cells) + 1)
        self._tone = tone.astype(np.float32)

    # ---- cells -------------------------------------------------------------
    def _place(self, n: int) -> list[Cell]:
        """Rejection-sample up to n cells whose centres lie inside the volume."""
        rng = np.random.default_rng((self.seed, 1))
        Z, Y, X = self.shape
        vz, vy, vx = self.voxel_size_nm
        phys = (_FILL * Z * Y * X * vz * vy * vx / max(n, 1) / (4 / 3 * math.pi)) ** (1 / 3)
        centres, sizes, cells = [], [], []
        for _ in range(40 * n):
            if len(cells) == n:
                break
            r = phys * math.exp(rng.normal(0, 0.2))
            c = rng.uniform(0, 1, 3) * (np.array(self.shape) - 1)
            cp = c * (vz, vy, vx)
            if centres:
                d = np.sqrt(((np.array(centres) - cp) ** 2).sum(1))
                if np.any(d < _SEPARATION * (np.array(sizes) + r)):
                    continue
            aspect = np.exp(rng.normal(0, 0.15, 3))
            radii = tuple(float(r * a / v) for a, v in zip(aspect, (vz, vy, vx)))
            amp = rng.uniform(0.08, 0.22)
            w = rng.normal(0, 1, 8)
            w = w * amp / np.abs(w).sum()
            centres.append(cp)
            sizes.append(r)
            cells.append(Cell(len(cells) + 1, tuple(float(v) for v in c), radii,
                              float(rng.uniform(0, math.pi)), tuple(float(v) for v in w)))
        return cells

    def _span(self, cell: Cell) -> tuple[int, int]:
        """Inclusive z range of planes the cell may touch."""
        cz, rz = cell.center[0], cell.radii[0] * cell.reach
        return max(0, math.ceil(cz - rz)), min(self.shape[0] - 1, math.floor(cz + rz))

    def _keep_present(self, cells: list[Cell]) -> list[Cell]:
        """Drop cells that do not own their centre voxel, renumber the rest 1..n.

        Dropping a cell only enlarges the others, so every kept cell still owns
        its centre voxel and thus appears in the volume. Sets the temporary
        ``self.cells``/``self._zrange`` that ``_plane_labels`` reads.
        """
        self.cells = cells
        self._zrange = np.array([self._span(c) for c in cells], dtype=np.int64).reshape(-1, 2)
        kept = []
        for c in cells:
            z, y, x = (int(round(v)) for v in c.center)
            if self._plane_labels(z, y, y + 1, x, x + 1)[0, 0] == c.id:
                kept.append(replace(c, id=len(kept) + 1))
        return kept

    def _plane_labels(self, z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Labels of plane z restricted to the window [y0:y1, x0:x1]."""
        out = np.zeros((y1 - y0, x1 - x0), np.uint64)
        best = np.full(out.shape, np.inf, np.float32)
        active = np.nonzero((self._zrange[:, 0] <= z) & (self._zrange[:, 1] >= z))[0]
        for i in active:
            cell = self.cells[i]
            reach = cell.reach
            dz = (z - cell.center[0]) / cell.radii[0]
            if abs(dz) >= reach:
                continue
            half = max(cell.radii[1:]) * math.sqrt(reach * reach - dz * dz) + 1
            cy, cx = cell.center[1:]
            a0, a1 = max(y0, math.floor(cy - half)), min(y1, math.ceil(cy + half) + 1)
            b0, b1 = max(x0, math.floor(cx - half)), min(x1, math.ceil(cx + half) + 1)
            if a0 >= a1 or b0 >= b1:
                continue
            rho = _rho(cell, z, np.arange(a0, a1, dtype=np.float32),
                       np.arange(b0, b1, dtype=np.float32))
            win = best[a0 - y0:a1 - y0, b0 - x0:b1 - x0]
            m = (rho < 1) & (rho < win)
            win[m] = rho[m]
            out[a0 - y0:a1 - y0, b0 - x0:b1 - x0][m] = cell.id
        return out

    def labels(self, z0: int, z1: int) -> np.ndarray:
        """uint64 labels of planes z0..z1-1, shape (z1-z0, Y, X); 0 is background."""
        _, Y, X = self.shape
        out = np.zeros((max(z1 - z0, 0), Y, X), np.uint64)
        for z in range(z0, z1):
            out[z - z0] = self._plane_labels(z, 0, Y, 0, X)
        return out

    # ---- image -------------------------------------------------------------
    def _axis(self, n: int, scale: int):
        """Lattice indices and smoothstep weights to upsample a grid by `scale` along n."""
        key = (n, scale)
        if key not in self._grid:
            f = np.arange(n, dtype=np.float32) / scale
            i = f.astype(np.int64)
            t = f - i
            self._grid[key] = (i, (t * t * (3 - 2 * t))[:, None].astype(np.float32))
        return self._grid[key]

    def _noise(self, z: int, key: int, scale: int, zscale: int = 1) -> np.ndarray:
        """Smooth value noise for plane z (about unit amplitude), features ~scale px wide,
        coherent over ~zscale planes; derived only from (seed, key, z)."""
        _, Y, X = self.shape
        gshape = (Y // scale + 2, X // scale + 2)

        def lattice(layer):
            return np.random.default_rng((self.seed, key, layer)).standard_normal(gshape, np.float32)

        layer, t = divmod(z, zscale)
        g = lattice(layer)
        if zscale > 1:
            t = t / zscale
            t = t * t * (3 - 2 * t)
            g = g * (1 - t) + lattice(layer + 1) * t
        iy, ty = self._axis(Y, scale)
        ix, tx = self._axis(X, scale)
        rows = g[iy] * (1 - ty) + g[iy + 1] * ty
        return rows[:, ix] * (1 - tx.T) + rows[:, ix + 1] * tx.T

    def _plane_image(self, z: int, lab: np.ndarray) -> np.ndarray:
        """Paint one EM-like uint8 plane consistent with its labels."""
        inside = lab > 0
        # neuropil: zero crossings of smooth noise give curvy membrane-like streaks
        n1 = self._noise(z, 11, 18, 3)
        streak = np.clip(1 - (n1 / 0.12) ** 2, 0, 1) * np.clip(self._noise(z, 12, 64, 4) + 0.8, 0, 1)
        bg = 150 - 75 * streak + 12 * self._noise(z, 13, 4) + 10 * self._noise(z, 14, 16, 2)
        # cytoplasm: per-cell tone, fine granular texture, dark organelle specks
        cyt = 182 + self._tone[lab] + 9 * self._noise(z, 21, 3) + 6 * self._noise(z, 22, 12, 2)
        cyt -= 95 * np.clip((self._noise(z, 23, 9, 2) + 0.4 * self._noise(z, 24, 5) - 0.95) * 3, 0, 1)
        img = np.where(inside, cyt, bg)
        # membranes: both sides of every in-plane label change, softened to ~4 px
        edge = np.zeros(lab.shape, np.float32)
        dy, dx = lab[1:] != lab[:-1], lab[:, 1:] != lab[:, :-1]
        edge[1:] += dy
        edge[:-1] += dy
        edge[:, 1:] += dx
        edge[:, :-1] += dx
        edge = np.minimum(edge, 1)
        soft = edge.copy()
        soft[1:] += 0.5 * edge[:-1]
        soft[:-1] += 0.5 * edge[1:]
        soft[:, 1:] += 0.5 * edge[:, :-1]
        soft[:, :-1] += 0.5 * edge[:, 1:]
        mem = np.minimum(soft, 1) * (0.8 + 0.2 * self._noise(z, 31, 8))
        img = img * (1 - 0.85 * mem) + 25 * 0.85 * mem
        shot = np.random.default_rng((self.seed, 41, z)).standard_normal(lab.shape, np.float32)
        img += 8 * shot
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def image(self, z0: int, z1: int, labels: np.ndarray | None = None) -> np.ndarray:
        """uint8 EM-like image of planes z0..z1-1; computes labels if not given."""
        if labels is None:
            labels = self.labels(z0, z1)
        out = np.zeros(labels.shape, np.uint8)
        for z in range(z0, z1):
            out[z - z0] = self._plane_image(z, labels[z - z0])
        return out

    def slab(self, z0: int, z1: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(z0, image, labels) of planes z0..z1-1."""
        lab = self.labels(z0, z1)
        return z0, self.image(z0, z1, lab), lab

    def slabs(self, depth: int = 16, workers: int = 1):
        """Yield (z0, image_slab, label_slab) for consecutive slabs covering the volume, in order. With
        ``workers`` > 1, that many slabs are made at once on threads (numpy frees the GIL for most of the
        work), at most ``workers`` ahead of the one yielded."""
        starts = iter(range(0, self.shape[0], depth))

        def one(z0: int):
            return self.slab(z0, min(z0 + depth, self.shape[0]))

        if workers <= 1:
            yield from map(one, starts)
            return
        from ndfs.core.ahead import in_order

        for _, made in in_order(one, starts, ahead=workers, name="ndfs-synth"):
            yield made
