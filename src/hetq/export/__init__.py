"""Bit-exact deployment: the integer engine, QONNX export and hls4ml projects.

    from hetq.export import IntegerModel
    eng = IntegerModel(model, (16,), input_type="ap_fixed<16,6,AP_RND_CONV,AP_SAT>")
    print(eng.compare(x_test).line())          # vs the PyTorch model: 0 mismatches

`hetq.export.qonnx` and `hetq.export.hls` need the `export` extra (onnx, qonnx, hls4ml).
"""

from .engine import BitExactReport, IntegerModel
from .steps import ExportError, shift_codes

__all__ = ["BitExactReport", "ExportError", "IntegerModel", "shift_codes"]
