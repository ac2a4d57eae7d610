"""Physical scene parameters for mergers and non-mergers, sampled deterministically from a seed.

A scene lives in the galaxy's rest frame: positions and sizes in proper kpc, luminosities as
absolute AB magnitudes in three bands (blue, middle, red), faint features as peak surface
brightness in mag/arcsec^2 before cosmological dimming. A preset (presets.py) decides the
redshift, instrument and depth it is observed with, so one scene can be drawn in any domain.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# kinds of scene
ISOLATED, NEIGHBOUR, PAIR, POSTMERGER = 0, 1, 2, 3
KIND_NAMES = ("isolated", "projected-neighbour", "close-pair", "post-merger")

# Sérsic slots: bulge and disc of the primary, bulge and disc of the second galaxy (merging
# partner or unrelated neighbour), and a second nucleus in post-merger remnants.
N_SERSIC = 5
DISC_SLOTS = (1, 3)
N_ARCS = 4  # tidal tails, bridges, shells, plumes
N_KNOTS = 6  # star-forming clumps (HII regions in discs, knots in tails)
ABSENT = 99.0  # magnitude of an absent component


@dataclass
class Scenes:
    """N scenes as arrays (struct of arrays, so a batch renders at once)."""

    label: np.ndarray  # (N,) 1 merger, 0 non-merger
    kind: np.ndarray  # (N,) ISOLATED..POSTMERGER
    z_quantile: np.ndarray  # (N,) where in a preset's redshift range the scene sits
    # Sérsic components (N, N_SERSIC); mag (N, N_SERSIC, 3)
    s_x: np.ndarray
    s_y: np.ndarray
    s_re: np.ndarray
    s_n: np.ndarray
    s_q: np.ndarray
    s_pa: np.ndarray
    s_mag: np.ndarray
    s_arm_amp: np.ndarray
    s_arm_pitch: np.ndarray
    s_arm_phase: np.ndarray
    # arcs (N, N_ARCS); mu (N, N_ARCS, 3) peak surface brightness, mag/arcsec^2
    a_cx: np.ndarray
    a_cy: np.ndarray
    a_radius: np.ndarray
    a_theta0: np.ndarray
    a_dtheta: np.ndarray
    a_w_in: np.ndarray
    a_w_out: np.ndarray
    a_widen: np.ndarray
    a_fade: np.ndarray
    a_taper0: np.ndarray
    a_taper1: np.ndarray
    a_mu: np.ndarray
    # Gaussian knots (N, N_KNOTS); mu (N, N_KNOTS, 3) peak surface brightness
    k_x: np.ndarray
    k_y: np.ndarray
    k_sigma: np.ndarray
    k_mu: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, index: np.ndarray | slice) -> Scenes:
        return Scenes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def blank(cls, n: int) -> Scenes:
        """``n`` empty non-merger scenes at mid redshift, to be filled by hand (tests, demos)."""
        return cls(
            label=np.zeros(n, dtype=np.int64),
            kind=np.full(n, ISOLATED, dtype=np.int64),
            z_quantile=np.full(n, 0.5),
            **_empty(n),
        )

    def as_arrays(self) -> dict[str, np.ndarray]:
        """All parameters by name (saved beside the images in the HDF5 cache)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _colour(rng, n, g_r, r_i, spread):
    """(n, 3) magnitude offsets relative to the middle band for given colours."""
    gr = g_r + spread * rng.standard_normal(n)
    ri = r_i + 0.5 * spread * rng.standard_normal(n)
    return np.stack([gr, np.zeros(n), -ri], axis=-1)


def _empty(n: int) -> dict[str, np.ndarray]:
    s = (n, N_SERSIC)
    a = (n, N_ARCS)
    k = (n, N_KNOTS)
    return {
        "s_x": np.zeros(s), "s_y": np.zeros(s), "s_re": np.ones(s), "s_n": np.ones(s),
        "s_q": np.ones(s), "s_pa": np.zeros(s), "s_mag": np.full((*s, 3), ABSENT),
        "s_arm_amp": np.zeros(s), "s_arm_pitch": np.full(s, 0.3), "s_arm_phase": np.zeros(s),
        "a_cx": np.zeros(a), "a_cy": np.zeros(a), "a_radius": np.ones(a),
        "a_theta0": np.zeros(a), "a_dtheta": np.ones(a), "a_w_in": np.ones(a),
        "a_w_out": np.ones(a), "a_widen": np.zeros(a), "a_fade": np.zeros(a),
        "a_taper0": np.full(a, 0.1), "a_taper1": np.full(a, 0.1),
        "a_mu": np.full((*a, 3), ABSENT),
        "k_x": np.zeros(k), "k_y": np.zeros(k), "k_sigma": np.ones(k),
        "k_mu": np.full((*k, 3), ABSENT),
    }  # fmt: skip


class _Builder:
    """Fills the arrays scene by scene group (vectorised over the scenes of one kind)."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.p = _empty(n)
        self.rng = rng

    def galaxy(self, idx, slot_b, slot_d, x, y, m_abs, late, disturbed) -> dict[str, np.ndarray]:
        """A bulge + exponential disc galaxy; returns its disc size and position angle."""
        rng, p, k = self.rng, self.p, len(idx)
        bt = np.where(late, rng.uniform(0.05, 0.4, k), rng.uniform(0.55, 1.0, k))
        lum_scale = 10 ** (-0.1 * (m_abs + 21.0))  # bigger galaxies are brighter
        re_d = rng.uniform(2.0, 4.5, k) * lum_scale
        re_b = np.minimum(rng.uniform(0.6, 2.2, k) * lum_scale, 0.7 * re_d)
        cos_i = rng.uniform(0.1, 1.0, k)
        # intrinsic thickness: discs thicken with bulge fraction (Sd ~0.1, Sa ~0.2, S0
        # ~0.25-0.35: de Grijs 1998, Rodriguez & Padilla 2013); a merger remnant's disc is
        # dynamically hot. A uniform 0.12 drew S0 discs edge-on as one-pixel streaks far past
        # their bulge.
        q0 = np.where(disturbed & ~late, 0.45, 0.1 + 0.25 * bt)
        q_d = np.sqrt(cos_i**2 * (1 - q0**2) + q0**2)
        pa = rng.uniform(0, np.pi, k)
        # a tidally disturbed disc is lopsided: its centre is offset from the bulge
        off = np.where(disturbed, rng.uniform(0.1, 0.35, k), 0.0) * re_d
        off_ang = rng.uniform(0, 2 * np.pi, k)
        m_b = m_abs - 2.5 * np.log10(np.maximum(bt, 1e-3))
        m_d = m_abs - 2.5 * np.log10(np.maximum(1 - bt, 1e-3))
        m_d = np.where(bt > 0.97, ABSENT, m_d)
        late_col = _colour(rng, k, 0.45, 0.25, 0.08)
        early_col = _colour(rng, k, 0.70, 0.35, 0.05)
        bulge_col = _colour(rng, k, 0.78, 0.40, 0.04)
        p["s_x"][idx, slot_b], p["s_y"][idx, slot_b] = x, y
        p["s_x"][idx, slot_d] = x + off * np.cos(off_ang)
        p["s_y"][idx, slot_d] = y + off * np.sin(off_ang)
        p["s_re"][idx, slot_b], p["s_re"][idx, slot_d] = re_b, re_d
        p["s_n"][idx, slot_b] = np.where(late, rng.uniform(1.5, 3.0, k), rng.uniform(3.0, 5.5, k))
        p["s_n"][idx, slot_d] = 1.0
        p["s_q"][idx, slot_b] = rng.uniform(0.6, 1.0, k)
        p["s_q"][idx, slot_d] = q_d
        p["s_pa"][idx, slot_b] = pa + rng.normal(0, 0.2, k)
        p["s_pa"][idx, slot_d] = pa
        p["s_mag"][idx, slot_b] = m_b[:, None] + bulge_col
        p["s_mag"][idx, slot_d] = m_d[:, None] + np.where(late[:, None], late_col, early_col)
        amp = np.where(late, rng.uniform(0.25, 0.7, k), rng.uniform(0.0, 0.15, k))
        p["s_arm_amp"][idx, slot_d] = np.where(disturbed, 0.5 * amp, amp)
        p["s_arm_pitch"][idx, slot_d] = np.radians(rng.uniform(12, 30, k))
        p["s_arm_phase"][idx, slot_d] = rng.uniform(0, 2 * np.pi, k)
        return {"re_d": re_d, "pa": pa, "q_d": q_d}

    def arc(self, idx, slot, cx, cy, radius, theta0, dtheta, w_in, w_out, widen, fade,
            taper0, taper1, mu_mid, colour) -> None:  # fmt: skip
        p = self.p
        for name, v in (("a_cx", cx), ("a_cy", cy), ("a_radius", radius),
                        ("a_theta0", theta0), ("a_dtheta", dtheta), ("a_w_in", w_in),
                        ("a_w_out", w_out), ("a_widen", widen), ("a_fade", fade),
                        ("a_taper0", taper0), ("a_taper1", taper1)):  # fmt: skip
            p[name][idx, slot] = v
        p["a_mu"][idx, slot] = mu_mid[:, None] + colour

    def tail(self, idx, slot, gx, gy, start, psi, sign, mu, present) -> None:
        """A curved tidal tail leaving a galaxy at (gx, gy) in direction ``psi``."""
        rng, k = self.rng, len(idx)
        radius = rng.uniform(10.0, 25.0, k)
        length = rng.uniform(20.0, 40.0, k)
        p0x, p0y = gx + start * np.cos(psi), gy + start * np.sin(psi)
        cx = p0x + radius * np.cos(psi + sign * np.pi / 2)
        cy = p0y + radius * np.sin(psi + sign * np.pi / 2)
        dtheta = sign * np.minimum(length / radius, 1.6 * np.pi)
        mu = np.where(present, mu, ABSENT)
        self.arc(idx, slot, cx, cy, radius, psi - sign * np.pi / 2, dtheta,
                 rng.uniform(1.2, 2.5, k), rng.uniform(1.2, 2.5, k), rng.uniform(0.3, 1.2, k),
                 rng.uniform(0.1, 0.7, k), np.full(k, 0.08), np.full(k, 0.25), mu,
                 _colour(rng, k, 0.38, 0.2, 0.08))  # fmt: skip
        # star-forming knots along the tail (tidal dwarf candidates)
        for j in range(2):
            kslot = 4 + j
            s = rng.uniform(0.3, 0.9, k)
            ang = psi - sign * np.pi / 2 + s * dtheta
            has = present & (rng.random(k) < 0.4)
            self.knot(
                idx[has],
                kslot,
                (cx + radius * np.cos(ang))[has],
                (cy + radius * np.sin(ang))[has],
                mu[has] - 2.0,
            )

    def knot(self, idx, slot, x, y, mu_peak) -> None:
        """A Gaussian star-forming clump with peak surface brightness ``mu_peak``."""
        rng, k = self.rng, len(idx)
        sigma = rng.uniform(0.25, 0.6, k)
        self.p["k_x"][idx, slot], self.p["k_y"][idx, slot] = x, y
        self.p["k_sigma"][idx, slot] = sigma
        self.p["k_mu"][idx, slot] = mu_peak[:, None] + _colour(rng, k, 0.15, 0.05, 0.08)


def sample_scenes(n: int, seed: int, merger_fraction: float = 0.5) -> Scenes:
    """``n`` scenes from ``seed``: a fraction ``merger_fraction`` of mergers (rounded)."""
    rng = np.random.default_rng([seed, 0x5CE7E])
    n_merger = int(round(n * merger_fraction))
    label = np.zeros(n, dtype=np.int64)
    label[rng.permutation(n)[:n_merger]] = 1
    u = rng.random(n)
    kind = np.where(
        label == 1, np.where(u < 0.5, PAIR, POSTMERGER), np.where(u < 0.6, ISOLATED, NEIGHBOUR)
    )
    b = _Builder(n, rng)
    z_quantile = rng.random(n)
    # the primary sits near the stamp centre, as in catalog cutouts
    m1 = rng.uniform(-22.4, -20.4, n)
    x1, y1 = rng.normal(0, 0.4, n), rng.normal(0, 0.4, n)
    late = rng.random(n) < 0.7
    merging = (kind == PAIR) | (kind == POSTMERGER)
    late = np.where(kind == POSTMERGER, False, late | (kind == PAIR))
    all_idx = np.arange(n)
    g1 = b.galaxy(all_idx, 0, 1, x1, y1, m1, late, merging)

    # -- non-mergers with an unrelated projected neighbour (at another distance: other size)
    nb = np.flatnonzero(kind == NEIGHBOUR)
    k = len(nb)
    sep = rng.uniform(7.0, 20.0, k)
    ang = rng.uniform(0, 2 * np.pi, k)
    b.galaxy(nb, 2, 3, x1[nb] + sep * np.cos(ang), y1[nb] + sep * np.sin(ang),
             m1[nb] + rng.uniform(0.8, 3.0, k), rng.random(k) < 0.6,
             np.zeros(k, dtype=bool))  # fmt: skip
    b.p["s_re"][nb, 2:4] *= rng.uniform(0.4, 1.0, k)[:, None]

    # -- close pairs: two discs with tails and often a bridge
    pr = np.flatnonzero(kind == PAIR)
    k = len(pr)
    sep = rng.uniform(5.0, 16.0, k)
    ang = rng.uniform(0, 2 * np.pi, k)
    x2, y2 = x1[pr] + sep * np.cos(ang), y1[pr] + sep * np.sin(ang)
    g2 = b.galaxy(pr, 2, 3, x2, y2, m1[pr] + rng.uniform(0.0, 1.5, k), np.ones(k, bool),
                  np.ones(k, bool))  # fmt: skip
    mu_tail = rng.uniform(21.8, 24.2, k)
    sign = np.where(rng.random(k) < 0.5, 1.0, -1.0)
    psi = ang + rng.uniform(-2.2, 2.2, k)  # tails leave roughly across the pair axis
    b.tail(pr, 0, x1[pr], y1[pr], 1.0 * g1["re_d"][pr], psi, sign, mu_tail, np.ones(k, bool))
    b.tail(pr, 1, x1[pr], y1[pr], 1.0 * g1["re_d"][pr], psi + np.pi, sign,
           mu_tail + rng.uniform(0.0, 1.0, k), rng.random(k) < 0.8)  # fmt: skip
    b.tail(pr, 2, x2, y2, 1.0 * g2["re_d"], ang + np.pi + rng.uniform(-1.5, 1.5, k), -sign,
           mu_tail + rng.uniform(-0.3, 1.0, k), rng.random(k) < 0.6)  # fmt: skip
    # bridge: a gently curved arc from one galaxy to the other
    has_bridge = rng.random(k) < 0.55
    alpha = rng.uniform(0.3, 1.0, k) * np.where(rng.random(k) < 0.5, 1, -1)
    chord = sep
    radius = chord / (2 * np.sin(np.abs(alpha) / 2))
    mx, my = 0.5 * (x1[pr] + x2), 0.5 * (y1[pr] + y2)
    perp = ang + np.sign(alpha) * np.pi / 2
    h = radius * np.cos(np.abs(alpha) / 2)
    cx, cy = mx + h * np.cos(perp), my + h * np.sin(perp)
    t0 = np.arctan2(y1[pr] - cy, x1[pr] - cx)
    t1 = np.arctan2(y2 - cy, x2 - cx)
    dth = np.angle(np.exp(1j * (t1 - t0)))
    b.arc(pr, 3, cx, cy, radius, t0, dth, rng.uniform(0.6, 1.4, k), rng.uniform(0.6, 1.4, k),
          np.zeros(k), np.zeros(k), np.full(k, 0.15), np.full(k, 0.15),
          np.where(has_bridge, mu_tail + rng.uniform(-0.5, 0.5, k), ABSENT),
          _colour(rng, k, 0.45, 0.22, 0.06))  # fmt: skip

    # -- post-merger remnants: spheroid + disturbed disc, shells, a plume, maybe two nuclei
    pm = np.flatnonzero(kind == POSTMERGER)
    k = len(pm)
    b.p["s_re"][pm, 1] *= 0.6  # the remnant's envelope is compact; its light went to features
    re_d = 0.6 * g1["re_d"][pm]
    centre = rng.uniform(0, 2 * np.pi, k)
    n_shells = rng.choice([0, 1, 2, 3], size=k, p=[0.3, 0.25, 0.25, 0.2])
    r_shell = rng.uniform(2.0, 3.2, k) * re_d
    mu_feat = rng.uniform(22.0, 24.2, k)
    for j in range(3):
        present = n_shells > j
        width = rng.uniform(1.3, 2.4, k)
        phi = centre + j * np.pi + rng.normal(0, 0.3, k)
        b.arc(pm, j, x1[pm], y1[pm], r_shell * (1.5**j), phi - width / 2, width,
              rng.uniform(1.0, 2.5, k), np.full(k, 0.3), np.zeros(k), np.zeros(k),
              np.full(k, 0.25), np.full(k, 0.25),
              np.where(present, mu_feat + 0.4 * j, ABSENT),
              _colour(rng, k, 0.65, 0.32, 0.05))  # fmt: skip
    # a broad plume or a fading tail where no shell occupies the slot's side
    has_plume = (n_shells < 3) & (rng.random(k) < 0.85)
    psi = centre + np.pi / 2 + rng.normal(0, 0.5, k)
    sign = np.where(rng.random(k) < 0.5, 1.0, -1.0)
    radius = rng.uniform(8.0, 18.0, k)
    start = 0.8 * re_d
    w_plume = np.minimum(rng.uniform(1.8, 3.5, k), 0.25 * radius)
    p0x, p0y = x1[pm] + start * np.cos(psi), y1[pm] + start * np.sin(psi)
    b.arc(pm, 3, p0x + radius * np.cos(psi + sign * np.pi / 2),
          p0y + radius * np.sin(psi + sign * np.pi / 2), radius, psi - sign * np.pi / 2,
          sign * rng.uniform(12.0, 26.0, k) / radius, w_plume, w_plume, rng.uniform(0.3, 1.0, k),
          rng.uniform(0.3, 1.0, k),
          np.full(k, 0.05), np.full(k, 0.45),
          np.where(has_plume | (n_shells == 0), mu_feat - 0.3, ABSENT),
          _colour(rng, k, 0.55, 0.28, 0.06))  # fmt: skip
    # a second nucleus, not yet coalesced
    two = rng.random(k) < 0.35
    nuc = pm[two]
    kk = len(nuc)
    dist = rng.uniform(1.0, 3.0, kk)
    a2 = rng.uniform(0, 2 * np.pi, kk)
    p = b.p
    p["s_x"][nuc, 4] = x1[nuc] + dist * np.cos(a2)
    p["s_y"][nuc, 4] = y1[nuc] + dist * np.sin(a2)
    p["s_re"][nuc, 4] = rng.uniform(0.3, 0.7, kk)
    p["s_n"][nuc, 4] = rng.uniform(1.5, 3.0, kk)
    p["s_q"][nuc, 4] = rng.uniform(0.6, 1.0, kk)
    p["s_mag"][nuc, 4] = (m1[nuc] + rng.uniform(1.8, 3.0, kk))[:, None] + _colour(
        rng, kk, 0.72, 0.38, 0.04
    )

    # -- HII regions in star-forming discs (non-merger spirals and pair discs alike)
    sf = np.flatnonzero(late & (kind != POSTMERGER))
    k = len(sf)
    re_d = g1["re_d"][sf]
    pa = g1["pa"][sf]
    q_d = g1["q_d"][sf]
    for j in range(4):
        has = rng.random(k) < 0.6
        r = rng.uniform(0.6, 1.8, k) * re_d
        t = rng.uniform(0, 2 * np.pi, k)
        dx, dy = r * np.cos(t), r * q_d * np.sin(t)
        x = x1[sf] + dx * np.cos(pa) - dy * np.sin(pa)
        y = y1[sf] + dx * np.sin(pa) + dy * np.cos(pa)
        b.knot(sf[has], j, x[has], y[has], rng.uniform(20.5, 22.0, k)[has])

    return Scenes(label=label, kind=kind.astype(np.int64), z_quantile=z_quantile, **b.p)
