"""Cost model: data types, energy (QTools-equivalent), model bits, EBOPs, FPGA estimates.

The names are imported on first use, so that the `hetq` command's help and argument errors
do not wait for PyTorch.
"""

from __future__ import annotations

from hetq import _lazy_names

_API = {
    "QType": "hetq.cost.qtypes",
    "UnsupportedQuantizer": "hetq.cost.qtypes",
    "qtype_of": "hetq.cost.qtypes",
    "CostReport": "hetq.cost.report",
    "cost": "hetq.cost.report",
}

__all__ = sorted(_API)

__getattr__, __dir__ = _lazy_names("hetq.cost", globals(), _API)
