"""Calibrate the FPGA estimate against published synthesis figures and print the error.

Anchors (anchors.md §3, Coelho et al. 2021, VU9P at 200 MHz, hls4ml latency strategy): the BF
(16-bit ap_fixed<16,6>) and Q6 (6-bit QKeras) jet taggers. The jet MLP is trained briefly on
the embedded simulated jets (so that weights have realistic magnitudes and zeros), converted
to BF and Q6, and the estimator's raw LUT components (sum of bit products of LUT multipliers,
sum of adder bits) are fitted by least squares to the published LUT counts. With two
constants and two anchors that fit is an exact solve, so the LUT rows print its residual (how
well the constants in the code reproduce the fit), not a validation; DSP, FF and latency are
not fitted and are compared as they come. Also prints HGQ's rule of thumb EBOPs ~ LUT + 55 DSP.

    python benchmarks/cost_calibration.py
"""

import argparse

import numpy as np
import torch

from hetq.cost import cost
from hetq.cost.fpga import ANCHORS, LUT_PER_ADDER_BIT, LUT_PER_BIT_PRODUCT
from hetq.data import get_dataset
from hetq.models import build, preset
from hetq.quant.convert import quantize_model
from hetq.train import fit


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # (--help)
    torch.manual_seed(0)
    data = get_dataset("jets-sim")
    f = build("jet_mlp")
    fit(f, data, epochs=10, lr=3e-3, progress=False)
    rows = {}
    for name in ("bf", "q6"):
        m = quantize_model(f, preset(name))
        fit(m, data, epochs=3, lr=1e-3, progress=False)
        layers = cost(m, source_quantizer="quantized_bits(16,5,1)").layers  # paper input
        tot = {k: sum(lc.fpga.get(k, 0.0) for lc in layers)
               for k in ("lut_mul_units", "lut_add_units", "dsp", "ff", "cycles", "lut")}
        tot["ebops"] = sum(lc.ebops for lc in layers)
        rows[name] = tot
    A = np.array([[rows[n]["lut_mul_units"], rows[n]["lut_add_units"]] for n in rows])
    b = np.array([ANCHORS[n]["lut"] for n in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(A, b, rcond=None)
    print(f"fitted LUT_PER_BIT_PRODUCT={coef[0]:.3f} LUT_PER_ADDER_BIT={coef[1]:.3f} "
          f"(in code: {LUT_PER_BIT_PRODUCT}, {LUT_PER_ADDER_BIT})")
    print(f"{'model':<5} {'quantity':<8} {'estimate':>10} {'published':>10} {'error':>8}")
    for n, r in rows.items():
        for k in ("lut", "dsp", "ff", "cycles"):
            est, pub = r[k], ANCHORS[n][k]
            note = "  (fit residual: LUT constants fitted to these two anchors)" \
                if k == "lut" else ""
            print(f"{n:<5} {k:<8} {est:10.0f} {pub:10.0f} {100 * (est - pub) / pub:7.1f}%{note}")
        hgq = ANCHORS[n]["lut"] + 55 * ANCHORS[n]["dsp"]
        print(f"{n:<5} {'EBOPs':<8} {r['ebops']:10.0f} {hgq:10.0f} "
              f"{100 * (r['ebops'] - hgq) / hgq:7.1f}%  (vs published LUT + 55 DSP)")


if __name__ == "__main__":
    main()
