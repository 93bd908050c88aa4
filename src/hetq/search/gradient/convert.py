"""A front point as an ordinary hetq model (QDense / QActivation with tensor-valued
quantizers) that computes exactly what the trained point computes."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from .model import GradientBitsMLP, _DenseQ, _int_bits, _round_f


def to_hetq_model(gmodel: GradientBitsMLP, state: dict | None = None) -> nn.Sequential:
    """An ordinary hetq model computing exactly what `gmodel` (with `state`) computes.

    A hidden neuron whose frac bits went below 0 (grid step 2**s) is rescaled by powers of
    two: its incoming weights and bias by 2**-s, its outgoing weights by 2**s, its
    activation then has step 1 and integer == bits. Power-of-two scaling is exact, keeps
    every weight's width, and the model's outputs are bit-identical."""
    from ...quant.fixed_point import quantized_bits, quantized_relu
    from ...quant.layers import QActivation, QDense

    g = copy.deepcopy(gmodel)
    if state is not None:
        g.load_state_dict(state)
    g.eval()
    layers = OrderedDict()
    inq = g.inq
    _, dead = inq.grid()
    # a pruned feature is always 0: give it a 2-bit type and zero its fc1 weights
    bits = torch.where(dead, torch.full_like(inq.integer, 2.0), inq.widths())
    integer = torch.where(dead, torch.zeros_like(inq.integer), inq.integer)
    if bits.dim() == 0:  # one type for every input (activations "layer")
        layers["input"] = QActivation(quantized_bits(int(bits), int(integer), alpha=1))
    else:
        layers["input"] = QActivation(quantized_bits(bits=bits, integer=integer, alpha=1))
    dead = dead.expand(next(m for m in g.body if isinstance(m, _DenseQ)).weight.shape[1])
    # pass 1: the quantized values. Dense layers: weights w, their frac bits f, bias b and
    # the bias's extra frac bits from rescaling (bshift, per row); activations: integer i
    # and frac bits f (scalars per layer or one per neuron), off = neurons with no bits
    items = []
    with torch.no_grad():
        for name, m in g.body.named_children():
            if isinstance(m, _DenseQ):
                wq = m.qweight().detach().clone()
                items.append(dict(dense=True, name=name, w=wq,
                                  f=_round_f(m.f).expand_as(wq).clone(),
                                  b=m.qbias().detach().clone(),
                                  bshift=torch.zeros(wq.shape[0])))
            else:
                f = _round_f(m.f, m.F_MIN)
                i = m.integer.clone()
                items.append(dict(dense=False, name=name, i=i, f=f, off=m.widths() < 1))
    # pass 2: zero the weights fed by dead inputs and those into neurons that cannot change
    # the output, rescale neurons with negative frac bits
    items[0]["w"][:, dead] = 0.0
    for it, useful in zip([it for it in items if it["dense"]], g._useful()):
        it["w"][~useful] = 0.0
        it["b"][~useful] = 0.0
    shifts = g._shifts()  # the powers of two that `ebops` counts the weights' types with
    for k, act in enumerate(items):
        if act["dense"]:
            continue
        prev, nxt = items[k - 1], items[k + 1] if k + 1 < len(items) else None
        off = act["off"]
        s = shifts[k]
        if nxt is not None:
            nxt["w"][:, off.expand(nxt["w"].shape[1]) if off.dim() == 0 else off] = 0.0
            col = s.expand(nxt["w"].shape[1]) if s.dim() == 0 else s
            nxt["w"] *= torch.pow(2.0, col).unsqueeze(0)
            nxt["f"] -= col.unsqueeze(0)
        row = s.expand(prev["w"].shape[0]) if s.dim() == 0 else s
        prev["w"] *= torch.pow(2.0, -row).unsqueeze(1)
        prev["f"] += row.unsqueeze(1)
        prev["b"] *= torch.pow(2.0, -row)
        prev["bshift"] += row
        act["i"], act["f"] = act["i"] - s, act["f"] + s
    # pass 3: the hetq layers
    with torch.no_grad():
        for it in items:
            name = it["name"]
            if it["dense"]:
                wq, bq = it["w"], it["b"]
                frw = it["f"].clamp_min(-1.0)  # same values on the finer grid (bits >= integer)
                iw = torch.maximum(_int_bits(wq, 2.0 ** -20), torch.zeros_like(wq) - frw + 1)
                wbits = (iw + frw + 1).clamp_min(2)
                bfrac = g.body._modules[name].bias_frac + int(it["bshift"].max())
                ib = float(_int_bits(bq, 2.0 ** -20).max().clamp_min(0))
                d = QDense(wq.shape[1], wq.shape[0],
                           kernel_quantizer=quantized_bits(bits=wbits, integer=wbits - 1 - frw,
                                                           alpha=1),
                           # (at least 2 bits: quantized_bits(1, 0) is +-1, not the 0 of
                           # biases that all round to 0 with bias_frac 0)
                           bias_quantizer=quantized_bits(max(int(ib) + bfrac + 1, 2), int(ib),
                                                         alpha=1))
                d.weight.copy_(wq)
                d.bias.copy_(bq)
                layers[name] = d
            else:
                i, f, off = it["i"], it["f"], it["off"]
                if f.dim() == 0:  # one type for the layer; no bits: its inputs are all 0
                    layers[name] = QActivation(quantized_relu(1, 0) if bool(off) else
                                               quantized_relu(int(i + f), int(i)))
                else:
                    # a neuron with no bits always outputs 0: 1-bit type (its weights are 0)
                    i = torch.where(off, torch.zeros_like(i), i)
                    b = torch.where(off, torch.ones_like(i), i + f)
                    layers[name] = QActivation(quantized_relu(bits=b, integer=i))
    return nn.Sequential(layers).eval()
