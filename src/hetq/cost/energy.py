"""The 45 nm Horowitz energy model of QTools ("horowitz" process; spec §4.5), in pJ.

Operations (b = bits; every cost clamped at >= 0):
    fixed add / mux / xor / and / shifter:  0.003125 b
    fixed multiply:                         0.002994791667 b^2 + 0.001041666667 b
    fp16 add / mul: 0.4 / 1.1     fp32 add / mul: 0.9 / 3.7   (constants)
Memory:
    DRAM read or write:  20.3125 pJ per bit (1.3 nJ per 64-bit word)
    SRAM, per 64-bit word: p(t) = 9.02427321e-4 t^3 - 2.68847858e-2 t^2 + 2.08900804e-1 t with
        t = log2(max(total bits, min_sram_size)). p reproduces Horowitz's per-word energies
        divided by 64 (a per-bit figure) but QTools multiplies it by the number of words;
        hetq reproduces that for parity (so SRAM is cheaper than it should be by ~64x).
"""

from __future__ import annotations

import math

from .qtypes import FLOAT, Multiplier, QType


def fpm_add(b: float) -> float:
    return max(0.0, 0.003125 * b)


def fpm_mul(b: float) -> float:
    return max(0.0, 0.002994791667 * b * b + 0.001041666667 * b)


def fp_add(bits: int) -> float:
    return 0.4 if bits <= 16 else 0.9


def fp_mul(bits: int) -> float:
    return 1.1 if bits <= 16 else 3.7


def sram_word(t: float) -> float:
    return max(0.0, 9.02427321e-4 * t ** 3 - 2.68847858e-2 * t ** 2 + 2.08900804e-1 * t)


MEMORIES = ("sram", "dram", "fixed")  # where weights and activations are placed


def mem_access(total_bits: float, mode: str, min_sram_size: float = 0.0,
               rd_wr_on_io: bool = True) -> float:
    """Energy to read (or write) `total_bits` from memory `mode` ("dram", "sram", "fixed")."""
    if total_bits <= 0 or mode == "fixed":
        return 0.0
    words = math.ceil(total_bits / 64)
    sram = words * sram_word(math.log2(max(total_bits, min_sram_size, 1)))
    if mode == "sram":
        return sram
    if mode == "dram":
        return 20.3125 * total_bits + (sram if rd_wr_on_io else 0.0)
    raise ValueError(f"memory placement {mode!r}; expected 'dram', 'sram' or 'fixed'")


def op_energy(mult: Multiplier, acc: QType) -> float:
    """Energy of one multiply-accumulate: gate_factor * cost(gate_bits) + add(acc bits)."""
    if mult.kind == "fmul":
        m = fp_mul(mult.output.bits)
    elif mult.kind == "mul":
        m = fpm_mul(mult.gate_bits)
    else:  # shifter, mux, xor, and, adder
        m = fpm_add(mult.gate_bits)
    return mult.gate_factor * m + acc_energy(acc)


def acc_energy(acc: QType) -> float:
    """Energy of one addition into an accumulator of type `acc`."""
    return fp_add(acc.bits) if acc.mode == FLOAT else fpm_add(acc.bits)
