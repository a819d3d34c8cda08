"""The population's constants (census mixes, sites, districts) and its counter-based random streams."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from screener.vocab import FACT_KINDS, SETTINGS

SOURCE = "synthetic"
DAY = 86_400_000_000  # microseconds
HOUR = 3_600_000_000
MINUTE = 60_000_000
YEAR = 365.25

#: ONS 2021 high-level groups among those with a stated group (West Yorkshire, Census 2021).
CENSUS_ETHNIC_MIX: dict[str, float] = {"white": 0.766, "asian": 0.158, "black": 0.031, "mixed": 0.025, "other": 0.020}
_GROUPS = tuple(CENSUS_ETHNIC_MIX)  # drawn with the weights above, in this order
_NOT_STATED = 0.01
#: NHS Data Dictionary ethnic category letters within each group, with West Yorkshire-like weights.
_CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "white": (("A", "B", "C"), (0.90, 0.01, 0.09)),
    "asian": (("H", "J", "K", "L"), (0.22, 0.66, 0.06, 0.06)),
    "black": (("M", "N", "P"), (0.30, 0.60, 0.10)),
    "mixed": (("D", "E", "F", "G"), (0.40, 0.15, 0.25, 0.20)),
    "other": (("S",), (1.0,)),
}
_IMD_WHITE = (0.200, 0.135, 0.105, 0.095, 0.085, 0.085, 0.078, 0.076, 0.074, 0.067)
_IMD_MINORITY = (0.42, 0.16, 0.10, 0.07, 0.06, 0.05, 0.04, 0.04, 0.03, 0.03)
_AGE_BANDS = (  # (lowest age, width in years, weight)
    (0, 5, 6.0),
    (5, 5, 6.5),
    (10, 5, 6.5),
    (15, 5, 6.0),
    (20, 5, 6.3),
    (25, 5, 6.6),
    (30, 5, 6.7),
    (35, 5, 6.5),
    (40, 5, 6.2),
    (45, 5, 6.3),
    (50, 5, 6.8),
    (55, 5, 6.6),
    (60, 5, 5.8),
    (65, 5, 4.9),
    (70, 5, 4.8),
    (75, 5, 3.5),
    (80, 5, 2.4),
    (85, 5, 1.4),
    (90, 6, 0.7),
)
_SETTINGS = SETTINGS  # a setting is drawn and stored as its index in this tuple
_HOSPITAL_SITES = ("RXX01", "RXX02")
_COMMUNITY_SITES = ("COMM-RXX-01", "COMM-RXX-02", "COMM-RXX-03", "COMM-RXX-04")
_GP_SITES = ("GP-B83001", "GP-B83005", "GP-B82018", "GP-B86010", "GP-B87003", "GP-B85011")
_HOME_SITE = "HOME-RXX-VW"
_DISTRICTS = (
    "BD1",
    "BD3",
    "BD4",
    "BD5",
    "BD7",
    "BD8",
    "BD9",
    "BD10",
    "BD18",
    "BD21",
    "LS4",
    "LS6",
    "LS7",
    "LS8",
    "LS9",
    "LS11",
    "LS12",
    "LS14",
    "LS17",
    "LS28",
    "HD1",
    "HD2",
    "HD3",
    "HD4",
    "HX1",
    "HX3",
    "WF1",
    "WF2",
    "WF10",
    "WF13",
    "WF17",
)

# ---------------------------------------------------------------------------------------------------------
# Counter-based randomness: u(seed, index, stream, k) in [0, 1), independent of how patients are batched.

_M64 = (1 << 64) - 1


def _mix_int(x: int) -> int:
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


class _Rand:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def u(self, idx: np.ndarray, stream: str, k: np.ndarray | int = 0) -> np.ndarray:
        key = np.uint64(_mix_int(_mix_int(self.seed * 0x9E3779B97F4A7C15 + 1) ^ zlib.crc32(stream.encode())))
        with np.errstate(over="ignore"):
            x = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key
            x = x + np.asarray(k, dtype=np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
            x = _mix(_mix(x))
        out: np.ndarray = (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
        return out

    def normal(self, idx: np.ndarray, stream: str, k: np.ndarray | int = 0) -> np.ndarray:
        u1 = 1.0 - self.u(idx, stream + ".1", k)
        u2 = self.u(idx, stream + ".2", k)
        out: np.ndarray = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return out

    def uniform(self, idx: np.ndarray, stream: str, lo: Any, hi: Any, k: np.ndarray | int = 0) -> np.ndarray:
        out: np.ndarray = lo + (np.asarray(hi) - lo) * self.u(idx, stream, k)
        return out

    def poisson(self, idx: np.ndarray, stream: str, lam: Any) -> np.ndarray:
        """Poisson counts by inverting the CDF (small means only; capped at 40)."""
        u = self.u(idx, stream)
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), u.shape)
        pmf = np.exp(-lam)
        cdf = pmf.copy()
        count = np.zeros(u.shape, dtype=np.int64)
        for k in range(1, 41):
            count += u > cdf
            pmf = pmf * lam / k
            cdf = cdf + pmf
        return count

    def choice(self, idx: np.ndarray, stream: str, probs: Sequence[float], k: np.ndarray | int = 0) -> np.ndarray:
        cum = np.cumsum(np.asarray(probs, dtype=np.float64))
        out: np.ndarray = np.minimum(
            np.searchsorted(cum / cum[-1], self.u(idx, stream, k), side="right"), len(probs) - 1
        )
        return out


def _nhs_numbers(idx: np.ndarray, seed: int) -> np.ndarray:
    """Valid NHS numbers in the 999 test range, vectorised (10-digit strings)."""
    six = (idx.astype(np.int64) * 7919 + seed * 104_729 + 12_345) % 1_000_000
    weights = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2])

    def checks(body6: np.ndarray) -> np.ndarray:
        digits = np.stack([np.full_like(body6, 9)] * 3 + [(body6 // 10**p) % 10 for p in range(5, -1, -1)], axis=1)
        c = 11 - (digits * weights).sum(axis=1) % 11
        return np.where(c == 11, 0, c)

    check = checks(six)
    six = np.where(check == 10, six ^ 1, six)  # a different last body digit always gives a usable check digit
    check = checks(six)
    return np.char.add(np.char.add("999", np.char.zfill(six.astype(str), 6)), check.astype(str))


# ---------------------------------------------------------------------------------------------------------
# Fact assembly: numpy parts, one registry of (system, code, unit) triples, one Polars frame per block.

Code = tuple[str, str, str | None]  # (system, code, unit)
_KINDS = FACT_KINDS  # the facts frame's kinds, from the shared vocabulary
