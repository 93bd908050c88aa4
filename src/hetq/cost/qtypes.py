"""QTools' data-type record and the operator rules (spec §4.2-4.4).

A `QType` is what the bit/energy model knows about a tensor: its mode (fixed, po2, ternary,
binary, binary01, float), width, integer bits (QTools convention: sign bit excluded) and sign,
plus the po2 exponent range. Operator rules give the type and energy parameters of
multipliers, accumulators and adders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

FIXED, PO2, TERNARY, BINARY, BINARY01, FLOAT = "fixed", "po2", "ternary", "binary", \
    "binary01", "float"


@dataclass(frozen=True)
class QType:
    mode: str
    bits: int
    int_bits: int = 0
    signed: bool = True
    max_val_po2: float = -1.0  # po2: max_value or -1

    @property
    def frac(self) -> int:
        return self.bits - int(self.signed) - self.int_bits

    # po2 exponent range, QTools' own formula
    @property
    def min_exp_mag(self) -> int:
        nsb = self.bits - int(self.signed)
        return 2 ** (nsb - 1)

    @property
    def max_exp(self) -> int:
        nsb = self.bits - int(self.signed)
        e = 2 ** (nsb - 1) - 1
        if self.max_val_po2 > 0:
            e = min(e, max(0, math.ceil(math.log2(self.max_val_po2))))
        return e

    def to_fixed(self) -> QType:
        """po2 values as a fixed-point type (bits = sign + min_exp_mag + max_exp)."""
        if self.mode != PO2:
            return self
        return QType(FIXED, int(self.signed) + self.min_exp_mag + self.max_exp, self.max_exp,
                     self.signed)

    def to_dict(self) -> dict:
        d = {"quantizer_type": self.mode, "bits": self.bits}
        if self.mode == FIXED:
            d.update(int_bits=self.int_bits + int(self.signed), is_signed=self.signed)
        elif self.mode == PO2:
            d.update(max_value=self.max_val_po2, is_signed=self.signed)
        elif self.mode in (TERNARY, BINARY, BINARY01):
            d["values"] = {TERNARY: [0, -1, 1], BINARY: [-1, 1], BINARY01: [0, 1]}[self.mode]
        return d

    def __str__(self) -> str:
        if self.mode == FIXED:
            return f"{'s' if self.signed else 'u'}fix{self.bits}.{self.int_bits}"
        if self.mode == PO2:
            return f"po2({self.bits})"
        if self.mode == FLOAT:
            return f"fp{self.bits}"
        return self.mode


NAMED = {
    "int8": QType(FIXED, 8, 0, True),      # quantized_bits(8,0,1)
    "int16": QType(FIXED, 16, 7, True),    # quantized_bits(16,7,1)
    "int32": QType(FIXED, 32, 10, True),   # quantized_bits(32,10,1)
    "fp16": QType(FLOAT, 16),
    "fp32": QType(FLOAT, 32),
}
FP32 = NAMED["fp32"]


def _largest(v) -> float:
    import torch

    return float(torch.as_tensor(v).max()) if not isinstance(v, (int, float)) else float(v)


class UnsupportedQuantizer(ValueError):
    """A quantizer the cost model has no rule for (the message names it)."""


def qtype_of(q) -> QType:
    """The QType of a quantizer object, a named type ("int8", "fp32", ...) or None (fp32)."""
    if q is None:
        return FP32
    if isinstance(q, QType):
        return q
    if isinstance(q, str):
        if q.strip() in NAMED:  # ('int8 ' was 'unknown quantizer int8')
            return NAMED[q.strip()]
        from ..quant import get_quantizer

        try:
            q = get_quantizer(q)
        except ValueError as e:
            raise ValueError(f"{e}; or a named type: {', '.join(NAMED)}") from None
    name = getattr(q, "name", type(q).__name__)
    kind = getattr(q, "kind", None)
    if kind == "float":
        return FP32
    bits = int(round(q.bits_value)) if hasattr(q, "bits_value") else 32
    if name in ("quantized_bits", "quantized_relu"):
        # tensor-valued (per-channel / per-weight) parameters: the type holding every
        # member, the most integer bits and the most bits below them (the largest bits and
        # the largest integer apart fell short: (8,0) and (4,3) are not held by 8 bits, 3
        # integer)
        import torch

        integer = int(_largest(q.integer))
        bits = integer + int(_largest(torch.as_tensor(q.bits) - torch.as_tensor(q.integer)))
    if name in ("quantized_bits",):
        return QType(FIXED, bits, integer, bool(q.keep_negative))
    if name == "quantized_relu":
        if bits == 1 and integer == 1:
            return QType(BINARY01, 1, 1, False)
        return QType(FIXED, bits, integer, bool(q.negative_slope))
    if name == "quantized_tanh":
        return QType(FIXED, bits, -1, True)  # (the reference leaves its int_bits unset: -1)
    if name == "quantized_ulaw":  # fixed point of its bits and integer, signed (spec 4.2)
        return QType(FIXED, bits, int(round(float(q.integer))), True)
    if name in ("quantized_po2", "quantized_relu_po2"):
        return QType(PO2, bits, bits, name == "quantized_po2",
                     float(q.max_value) if q.max_value else -1.0)
    if name in ("ternary", "stochastic_ternary"):
        return QType(TERNARY, 2, 2, True)
    if name in ("binary", "stochastic_binary"):
        if getattr(q, "use_01", False):
            return QType(BINARY01, 1, 1, False)
        return QType(BINARY, 1, 1, True)
    raise UnsupportedQuantizer(
        f"the cost model has no rule for quantizer {q} (supported: quantized_bits, "
        "quantized_relu, quantized_tanh, quantized_ulaw, quantized_po2, quantized_relu_po2, "
        "binary, ternary and their stochastic versions)")


# -- operators ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Multiplier:
    kind: str  # mul, shifter, mux, xor, and, adder, fmul
    output: QType
    gate_factor: float
    gate_bits: float


def multiplier(w: QType, x: QType) -> Multiplier:
    """Product of a weight of type `w` and an input of type `x` (spec §4.3 table)."""
    if w.mode == FLOAT or x.mode == FLOAT:
        b = max(w.bits if w.mode == FLOAT else 0, x.bits if x.mode == FLOAT else 0)
        return Multiplier("fmul", QType(FLOAT, b), 1.0, b)
    if w.mode == BINARY01 or x.mode == BINARY01:
        width = max(w.bits, x.bits)
        other = x if w.mode == BINARY01 else w
        return Multiplier("and", QType(FIXED, width, other.int_bits, other.signed), 0.1, width)
    if w.mode in (TERNARY, BINARY) or x.mode in (TERNARY, BINARY):
        if w.mode == BINARY and x.mode == BINARY:
            return Multiplier("xor", QType(BINARY, 1, 1, True), 0.3, 1)
        sel, other = (w, x) if w.mode in (TERNARY, BINARY) else (x, w)
        if other.mode == TERNARY:  # binary x ternary / ternary x ternary: a 2-bit value
            other = QType(FIXED, 2, 1, True)
        elif other.mode == BINARY:  # ternary (weight) x binary: the binary's 1 bit (QTools)
            other = _fixed_view(other)
        gate = other.bits  # the other operand's width (a po2 one's own, as QTools)
        other = other.to_fixed()
        extra = 1 if (not other.signed and sel.signed) else 0
        out = QType(FIXED, other.bits + extra, other.int_bits, other.signed or sel.signed)
        return Multiplier("mux", out, 0.3 if sel.mode == BINARY else 0.6, gate)
    if w.mode == PO2 and x.mode == PO2:
        b = max(w.bits, x.bits) + 1
        return Multiplier("adder", QType(PO2, b, b, w.signed or x.signed), 1.0, b)
    if w.mode == PO2 or x.mode == PO2:
        p, f = (w, x) if w.mode == PO2 else (x, w)
        extra = 1 if (not f.signed and p.signed) else 0
        bits = f.bits + p.max_exp + p.min_exp_mag + extra
        out = QType(FIXED, bits, f.int_bits + p.max_exp, f.signed or p.signed)
        big = math.sqrt(2 ** p.bits * f.bits)
        return Multiplier("shifter", out, 1.0, big * math.log10(big))
    # fixed x fixed
    int_bits = x.int_bits + w.int_bits
    frac = x.frac + w.frac
    signed = x.signed or w.signed
    out = QType(FIXED, int_bits + frac + int(signed), int_bits, signed)
    return Multiplier("mul", out, 1.0, math.sqrt(x.bits * w.bits))


def accumulator(mult: QType, n_add: int) -> QType:
    """Sum of `n_add` products: + ceil(log2 n_add) bits (po2 products converted first)."""
    if mult.mode == FLOAT:
        return mult
    m = _fixed_view(mult)  # binary x binary (xor): 1 bit, as QTools
    lg = math.ceil(math.log2(n_add)) if n_add > 1 else 0
    return QType(FIXED, m.bits + lg, m.int_bits + lg, m.signed)


def adder(a: QType, b: QType) -> QType:
    """a + b: int = max + 1, frac = max (po2 and binary/ternary as fixed; float wins)."""
    if a.mode == FLOAT or b.mode == FLOAT:
        return QType(FLOAT, max(a.bits if a.mode == FLOAT else 0, b.bits if b.mode == FLOAT
                                else 0))
    a, b = _fixed_view(a), _fixed_view(b)
    int_bits = max(a.int_bits, b.int_bits) + 1
    frac = max(a.frac, b.frac)
    signed = a.signed or b.signed
    return QType(FIXED, int_bits + int(signed) + frac, int_bits, signed)


def _fixed_view(t: QType) -> QType:
    if t.mode == PO2:
        return t.to_fixed()
    if t.mode in (TERNARY, BINARY, BINARY01):
        return replace(t, mode=FIXED)
    return t
