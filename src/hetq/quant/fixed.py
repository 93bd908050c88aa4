"""`FixedType`: the one fixed-point type record shared by quantizers, cost model and exporters.

A `FixedType(width, integer, signed, rounding, overflow)` means exactly what
`ap_fixed<W, I, Q, O>` (signed) or `ap_ufixed<W, I, Q, O>` (unsigned) means in the Vivado/Vitis
HLS arbitrary-precision types:

* `width` W: total bits, sign bit included.
* `integer` I: bits left of the binary point, sign bit included (may be negative or > W).
* step (LSB) = 2**(I - W); frac bits F = W - I.
* signed range [-2**(I-1), 2**(I-1) - step]; unsigned [0, 2**I - step].

So QKeras `quantized_bits(W, I)` (signed; I excludes the sign) is `FixedType(W, I + 1)`, and
unsigned `quantized_bits(W, I, keep_negative=False)` / `quantized_relu(W, I)` is
`FixedType(W, I, signed=False)`.

Rounding modes (ap_fixed `Q`): TRN (floor), TRN_ZERO, RND (half up), RND_ZERO, RND_MIN_INF,
RND_INF (half away from zero), RND_CONV (half to even). Overflow modes (`O`): WRAP, SAT,
SAT_ZERO, SAT_SYM.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch

_TYPE_RE = re.compile(r"(ap_)?(u?)fixed<(\d+),(-?\d+)(?:,AP_([A-Z_]+))?(?:,AP_([A-Z_]+))?>")
ROUNDING_MODES = ("TRN", "TRN_ZERO", "RND", "RND_ZERO", "RND_MIN_INF", "RND_INF", "RND_CONV")
OVERFLOW_MODES = ("WRAP", "SAT", "SAT_ZERO", "SAT_SYM")


@dataclass(frozen=True)
class FixedType:
    """A fixed-point number format with `ap_fixed<width, integer, rounding, overflow>` meaning."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "TRN"
    overflow: str = "WRAP"

    def __post_init__(self):
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"FixedType width must be an integer >= 1, got {self.width!r}")
        if not isinstance(self.integer, int):
            raise ValueError(f"FixedType integer must be an integer, got {self.integer!r}")
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(
                f"FixedType rounding {self.rounding!r} is not one of {', '.join(ROUNDING_MODES)}"
            )
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(
                f"FixedType overflow {self.overflow!r} is not one of {', '.join(OVERFLOW_MODES)}"
            )

    # -- derived numbers -------------------------------------------------------------------
    @property
    def frac(self) -> int:
        """Fractional bits F = W - I."""
        return self.width - self.integer

    @property
    def step(self) -> float:
        """Value of one LSB, 2**(I - W)."""
        return math.ldexp(1.0, -self.frac)

    @property
    def min_code(self) -> int:
        """Smallest integer code (value = code * step)."""
        if not self.signed:
            return 0
        lo = -(1 << (self.width - 1))
        return lo + 1 if self.overflow == "SAT_SYM" else lo

    @property
    def max_code(self) -> int:
        return (1 << (self.width - (1 if self.signed else 0))) - 1

    @property
    def min_value(self) -> float:
        return self.min_code * self.step

    @property
    def max_value(self) -> float:
        return self.max_code * self.step

    def values(self) -> torch.Tensor:
        """All representable values, ascending (only sensible for small widths)."""
        if self.width > 20:
            raise ValueError(f"{self} has 2**{self.width} values; refusing to list them")
        codes = torch.arange(self.min_code, self.max_code + 1, dtype=torch.float64)
        return codes * self.step

    # -- conversions -----------------------------------------------------------------------
    def to_hls(self) -> str:
        """The HLS C++ type, e.g. `ap_fixed<6,1,AP_RND_CONV,AP_SAT>`."""
        base = "ap_fixed" if self.signed else "ap_ufixed"
        if self.rounding == "TRN" and self.overflow == "WRAP":
            return f"{base}<{self.width},{self.integer}>"
        return f"{base}<{self.width},{self.integer},AP_{self.rounding},AP_{self.overflow}>"

    @classmethod
    def parse(cls, text: str) -> FixedType:
        """`ap_fixed<16,6>`, `ap_ufixed<6,0,AP_RND_CONV,AP_SAT>`, `fixed<8,3>`, `ufixed<4,0>`."""
        m = _TYPE_RE.fullmatch(text.strip().replace(" ", ""))
        if not m:
            raise ValueError(f"cannot parse fixed-point type {text!r}; expected e.g. "
                             "'ap_fixed<16,6>' or 'ap_ufixed<8,0,AP_RND_CONV,AP_SAT>'")
        rounding, overflow = (m.group(5) or "TRN"), (m.group(6) or "WRAP")
        return cls(int(m.group(3)), int(m.group(4)), m.group(2) != "u", rounding, overflow)

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> FixedType:
        return cls(**config)

    def __str__(self) -> str:
        return self.to_hls()

    # -- arithmetic ------------------------------------------------------------------------
    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (as float64 tensor) of `x` cast to this type: round, then overflow.

        Computed in float64, exact for widths up to 52 bits.
        """
        y = x.to(torch.float64) * math.ldexp(1.0, self.frac)
        y = _round(y, self.rounding)
        lo, hi = self.min_code, self.max_code
        if self.overflow == "WRAP":
            span = float(1 << self.width)
            y = torch.remainder(y - lo, span) + lo
        elif self.overflow == "SAT_ZERO":
            y = torch.where((y < lo) | (y > hi), torch.zeros_like(y), y)
        else:  # SAT, SAT_SYM (min_code already symmetric for SAT_SYM)
            y = y.clamp(lo, hi)
        return y

    def cast(self, x: torch.Tensor) -> torch.Tensor:
        """`x` cast to this type (float64 values on the grid), ap_fixed semantics."""
        return self.to_codes(x) * self.step

    def contains(self, x: torch.Tensor) -> bool:
        """True when every element of `x` is exactly representable."""
        x64 = x.to(torch.float64)
        return bool(torch.equal(self.cast(x64), x64))


def _round(y: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "TRN":
        return torch.floor(y)
    if mode == "TRN_ZERO":
        return torch.trunc(y)
    if mode == "RND":
        return torch.floor(y + 0.5)
    if mode == "RND_ZERO":
        return torch.sign(y) * torch.ceil(y.abs() - 0.5)
    if mode == "RND_MIN_INF":
        return torch.ceil(y - 0.5)
    if mode == "RND_INF":
        return torch.sign(y) * torch.floor(y.abs() + 0.5)
    return torch.round(y)  # RND_CONV: half to even


def smallest_fixed_type(values: torch.Tensor, signed: bool | None = None) -> FixedType:
    """Smallest `FixedType` (TRN/WRAP) that holds every value in `values` exactly.

    Raises ValueError if some value is not a dyadic rational with at most 52 fractional bits.
    """
    v = values.detach().to(torch.float64).flatten()
    if v.numel() == 0 or not torch.isfinite(v).all():
        raise ValueError("smallest_fixed_type needs a non-empty tensor of finite values")
    if signed is None:
        signed = bool((v < 0).any())
    frac = 0
    while not torch.equal(torch.round(v * math.ldexp(1.0, frac)), v * math.ldexp(1.0, frac)):
        frac += 1
        if frac > 52:
            raise ValueError("values are not on a binary fixed-point grid")
    codes = torch.round(v * math.ldexp(1.0, frac))
    # drop trailing zero bits so the LSB is the coarsest exact grid
    while frac > -64 and bool((torch.remainder(codes, 2) == 0).all()) and bool((codes != 0).any()):
        codes = codes / 2
        frac -= 1
    hi = float(codes.max())
    lo = float(codes.min())
    mag_bits = max(int(hi).bit_length() if hi > 0 else 0,
                   int(-lo - 1).bit_length() if lo < 0 else 0)
    width = max(1, mag_bits + (1 if signed else 0))
    return FixedType(width, width - frac, signed)
