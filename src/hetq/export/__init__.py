"""Bit-exact deployment: the integer engine, QONNX export and hls4ml projects.

    from hetq.export import IntegerModel
    eng = IntegerModel(model, (16,), input_type="ap_fixed<16,6,AP_RND_CONV,AP_SAT>")
    print(eng.compare(x_test).line())          # vs the PyTorch model: 0 mismatches

`hetq.export.qonnx` and `hetq.export.hls` need the `export` extra (onnx, qonnx, hls4ml).

The names are imported on first use, so that the `hetq` command's help and argument errors
do not wait for PyTorch.
"""

from __future__ import annotations

from hetq import _lazy_names

_API = {
    "BitExactReport": "hetq.export.engine",
    "IntegerModel": "hetq.export.engine",
    "ExportError": "hetq.export.steps",
    "shift_codes": "hetq.export.steps",
}

__all__ = sorted(_API)

__getattr__, __dir__ = _lazy_names("hetq.export", globals(), _API)
