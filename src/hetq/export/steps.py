"""The integer program's pieces: exact casts of int64 codes between fixed-point types
(`shift_codes`, with every ap_fixed rounding and overflow mode), and the steps that
`IntegerModel` (hetq.export.engine) compiles a model into: casts, per-feature casts, lookup
tables, grid-keeping modules, weighted sums, batch-norm scale/shift and pooling. Each step
maps the codes of its input type to the codes of its `out_type`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..quant.fixed import FixedType


class ExportError(ValueError):
    """A model that cannot be run or exported bit-exactly; the message names layer and fix."""


# -- integer casts ---------------------------------------------------------------------------
def shift_codes(codes: torch.Tensor, frac_in: int, ft: FixedType) -> torch.Tensor:
    """Codes at `frac_in` frac bits cast to `ft` (its rounding and overflow), exactly, for
    codes below 2**60 in magnitude (types of up to 53 bits: `MAX_EXACT_BITS`). Shifts of
    any length: codes * 2**s wrapped around int64 (ap_fixed<8,60> cast to
    quantized_bits(8,0) gave 0 where it saturates at +-1), and 1 << k failed from k = 63."""
    k = frac_in - ft.frac
    if k <= 0:
        s = -k
        if ft.overflow == "WRAP":  # only the low `width` bits of codes * 2**s are kept
            y = (torch.remainder(codes, 1 << (ft.width - s)) * (1 << s) if s < ft.width
                 else torch.zeros_like(codes))
        else:  # a code this large saturates (or is zeroed) whatever its exact value
            big = 1 << max(0, 61 - s)
            y = codes.clamp(-big, big) * (1 << min(s, 61))
    else:
        k = min(k, 62)  # (a longer shift rounds every code of < 2**60 the same way)
        q = torch.div(codes, 1 << k, rounding_mode="floor")
        r = codes - q * (1 << k)  # 0 <= r < 2**k
        half = 1 << (k - 1)
        neg = codes < 0
        mode = ft.rounding
        if mode == "TRN":
            y = q
        elif mode == "TRN_ZERO":
            y = q + (neg & (r != 0))
        elif mode == "RND":
            y = q + (r >= half)
        elif mode == "RND_MIN_INF":
            y = q + (r > half)
        elif mode == "RND_INF":
            y = q + ((r > half) | ((r == half) & ~neg))
        elif mode == "RND_ZERO":
            y = q + ((r > half) | ((r == half) & neg))
        else:  # RND_CONV
            y = q + ((r > half) | ((r == half) & (q % 2 == 1)))
        y = y.to(torch.int64)
    lo, hi = ft.min_code, ft.max_code
    if ft.overflow == "WRAP":
        return torch.remainder(y - lo, 1 << ft.width) + lo
    if ft.overflow == "SAT_ZERO":
        return torch.where((y < lo) | (y > hi), torch.zeros_like(y), y)
    return y.clamp(lo, hi)


def codes_of(values: torch.Tensor, ft: FixedType, what: str) -> torch.Tensor:
    """Exact int64 codes of `values` (which must lie on `ft`'s grid)."""
    v = values.detach().to(torch.float64)
    c = v * math.ldexp(1.0, ft.frac)
    if not torch.equal(c, torch.round(c)) or c.numel() and (
            float(c.min()) < ft.min_code or float(c.max()) > ft.max_code):
        raise ExportError(f"{what}: values are not all representable in {ft}")
    return c.to(torch.int64)


def type_for_range(lo: int, hi: int, frac: int) -> FixedType:
    """Smallest signed FixedType with `frac` frac bits holding codes lo..hi (TRN/WRAP)."""
    mag = max(hi.bit_length() if hi > 0 else 0, (-lo - 1).bit_length() if lo < 0 else 0)
    width = max(2, mag + 1)
    return FixedType(width, width - frac, True)


def code_range(ft: FixedType) -> tuple[int, int]:
    return ft.min_code, ft.max_code


# -- steps -----------------------------------------------------------------------------------
@dataclass
class Step:
    """One operation of the integer program: name of the module, kind, output type."""

    name: str
    kind: str
    out_type: FixedType
    detail: dict = field(default_factory=dict)

    def run(self, x: torch.Tensor, in_type: FixedType) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass
class CastStep(Step):
    def run(self, x, in_type):
        return shift_codes(x, in_type.frac, self.out_type)


@dataclass
class TensorCastStep(Step):
    """Per-feature casts (tensor-valued quantized_bits/relu over the last dimension)."""

    types: list = field(default_factory=list)

    def run(self, x, in_type):
        # one type (bits of shape (1,)) is every feature's, as the quantizer broadcasts it
        # (the engine kept only the first column)
        types = self.types * x.shape[-1] if len(self.types) == 1 else self.types
        if len(types) != x.shape[-1]:
            raise ExportError(f"{self.name}: the quantizer has {len(types)} per-feature "
                              f"types for {x.shape[-1]} features")
        cols = [shift_codes(x[..., j], in_type.frac, t) * (1 << (self.out_type.frac - t.frac))
                for j, t in enumerate(types)]
        return torch.stack(cols, dim=-1)


def tensor_cast_types(q) -> list[FixedType] | None:
    """Per-feature FixedTypes of a quantized_bits/relu with 1-D tensor bits/integer."""
    name = getattr(q, "name", "")
    if name not in ("quantized_bits", "quantized_relu") or getattr(q, "is_scalar", True):
        return None
    if getattr(q, "use_stochastic_rounding", False) or getattr(q, "qnoise_factor", 1.0) != 1.0:
        return None
    if name == "quantized_bits" and (isinstance(q.alpha, (str, torch.Tensor))
                                     or q.alpha not in (None, 1, 1.0)):
        return None  # (a tensor alpha: per-feature scales, not casts)
    if name == "quantized_relu" and (q.negative_slope or q.use_sigmoid or q._clips_at_bound()):
        return None
    bits, integer = torch.as_tensor(q.bits), torch.as_tensor(q.integer)
    if bits.dim() > 1 or integer.dim() > 1:
        return None
    n = max(bits.numel(), integer.numel())
    bits, integer = bits.expand(n), integer.expand(n)
    out = []
    for b, i in zip(bits.tolist(), integer.tolist()):
        b, i = int(b), int(i)
        if name == "quantized_relu":
            out.append(FixedType(b, i, False, "RND_CONV", "SAT"))
        elif q.keep_negative:
            if b < 2:
                return None
            out.append(FixedType(b, i + 1, True, "RND_CONV",
                                 "SAT_SYM" if q.symmetric else "SAT"))
        else:
            out.append(FixedType(b, i, False, "RND_CONV", "SAT"))
    return out


@dataclass
class TableStep(Step):
    """Elementwise quantizer evaluated at the exact input values (a table over the grid)."""

    quantizer: nn.Module = None

    def run(self, x, in_type):
        v = x.to(torch.float64) * in_type.step
        with torch.no_grad():
            y = self.quantizer(v)
        return codes_of(y, self.out_type, f"{self.name}: {self.quantizer}")


@dataclass
class KeepStep(Step):
    """ReLU, flatten/unflatten, max pooling, identity, dropout: grid-preserving float
    modules."""

    module: nn.Module = None

    def run(self, x, in_type):
        if isinstance(self.module, nn.ReLU):
            return x.clamp_min(0)
        if isinstance(self.module, (nn.Identity, nn.modules.dropout._DropoutNd)):
            return x  # (dropout: inference)
        return self.module(x.to(torch.float64)).to(torch.int64)


@dataclass
class WeightStep(Step):
    """acc = op(x_codes, w_codes) << a + b_codes << c, exact (float64 on integers < 2**53)."""

    op: object = None  # callable(x_f64, w_f64) -> f64
    w_codes: torch.Tensor = None
    w_type: FixedType = None
    b_codes: torch.Tensor | None = None
    b_type: FixedType | None = None
    channel_dim: int = 1

    def run(self, x, in_type):
        acc = self.op(x.to(torch.float64), self.w_codes.to(torch.float64))
        frac = self.out_type.frac
        acc = acc * float(1 << (frac - in_type.frac - self.w_type.frac))
        if self.b_codes is not None:
            b = (self.b_codes * (1 << (frac - self.b_type.frac))).to(torch.float64)
            # a dense layer's outputs are its last axis (also on (N, L, features) inputs); a
            # convolution's channels are axis 1
            acc = acc + (b if self.kind == "dense" else b.view([1, -1] + [1] * (acc.dim() - 2)))
        return acc.to(torch.int64)


@dataclass
class ScaleShiftStep(Step):
    """y = x * inv + shift per channel (a batch norm whose scale and shift are on grids)."""

    inv_codes: torch.Tensor = None
    inv_type: FixedType = None
    shift_codes: torch.Tensor = None
    shift_type: FixedType = None

    def run(self, x, in_type):
        shape = [1, -1] + [1] * (x.dim() - 2)
        frac = self.out_type.frac
        y = x * self.inv_codes.view(shape) * (1 << (frac - in_type.frac - self.inv_type.frac))
        return y + (self.shift_codes * (1 << (frac - self.shift_type.frac))).view(shape)


@dataclass
class PoolStep(Step):
    """Average pooling: code sums times the code of the quantized 1/area."""

    pool: object = None  # callable(x_f64) -> sums (f64)
    avg_codes: int = 1
    avg_type: FixedType | None = None

    def run(self, x, in_type):
        s = self.pool(x.to(torch.float64)).to(torch.int64)
        if self.avg_type is None:
            return s
        return s * self.avg_codes * (1 << (self.out_type.frac - in_type.frac
                                           - self.avg_type.frac))
