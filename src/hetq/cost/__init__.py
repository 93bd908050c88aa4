"""Cost model: data types, energy (QTools-equivalent), model bits, EBOPs, FPGA estimates."""

from .qtypes import QType, UnsupportedQuantizer, qtype_of
from .report import CostReport, cost

__all__ = ["CostReport", "QType", "UnsupportedQuantizer", "cost", "qtype_of"]
