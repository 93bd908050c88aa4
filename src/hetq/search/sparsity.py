"""Magnitude pruning during QAT with a polynomial schedule (Zhu & Gupta 2017).

At the end of epoch e (0-based) of E, each layer's target sparsity is

    s(e) = s_final * (1 - (1 - (e + 1) / E_ramp) ** 3)      (clipped at s_final),

with E_ramp = max(1, round(ramp_fraction * E)): the first epochs prune a lot, later ones
little, and the last epochs train at the final sparsity. The smallest-magnitude weights of
the layer's kernel are masked; masked weights are zeroed after every optimiser step (so
Adam's momentum cannot revive them) and cost nothing in EBOPs or LUT estimates (the cost model
counts nonzero weights only), as long as the layer's kernel quantizer maps 0 to 0: a
quantized_po2 or binary kernel gives a masked weight a nonzero value (e.g. 2**-8, or
+-alpha), and the sparsity then saves nothing (the cost counts the quantized weights, so it
says so).
"""

from __future__ import annotations

import torch
from torch import nn


def polynomial_sparsity(final: float, epoch: int, epochs: int, ramp_fraction: float = 0.7,
                        power: int = 3) -> float:
    """Target sparsity after epoch `epoch` (0-based) of `epochs`."""
    ramp = max(1, round(ramp_fraction * epochs))
    t = min(1.0, (epoch + 1) / ramp)
    return final * (1.0 - (1.0 - t) ** power)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask keeping the largest-|w| entries; exactly round(sparsity * n) are zero."""
    n = weight.numel()
    k = int(round(sparsity * n))
    mask = torch.ones_like(weight)
    if k <= 0:
        return mask
    idx = torch.argsort(weight.detach().abs().flatten(), stable=True)[:k]
    mask.view(-1)[idx] = 0.0
    return mask


class MagnitudePruner:
    """Prunes named layers' kernels to their final sparsity over training.

    Use: `p = MagnitudePruner(model, {"fc1": 0.5}, epochs)`, `p.attach(optimizer)` before
    training, `p.on_epoch_end(epoch)` after each epoch.
    """

    def __init__(self, model: nn.Module, sparsity: dict[str, float], epochs: int,
                 ramp_fraction: float = 0.7):
        modules = dict(model.named_modules())
        self.targets: dict[str, float] = {}
        self.params: dict[str, torch.nn.Parameter] = {}
        for name, s in sparsity.items():
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity for {name!r} must be in [0, 1), got {s!r}")
            if name not in modules or not isinstance(getattr(modules[name], "weight", None),
                                                     torch.Tensor):
                raise ValueError(f"sparsity given for {name!r}, which is not a weight layer")
            if s > 0:
                self.targets[name] = s
                self.params[name] = modules[name].weight
        self.epochs = epochs
        self.ramp_fraction = ramp_fraction
        self.masks: dict[str, torch.Tensor] = {}
        self._handle = None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        if self.targets:
            self._handle = optimizer.register_step_post_hook(lambda *_: self.apply())

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            self.params[name].mul_(mask)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        for name, final in self.targets.items():
            s = polynomial_sparsity(final, epoch, self.epochs, self.ramp_fraction)
            self.masks[name] = magnitude_mask(self.params[name], s)
        self.apply()

    @classmethod
    def keeping(cls, model: nn.Module, sparsity: dict[str, float]) -> MagnitudePruner:
        """A pruner that keeps the zeros `model`'s pruned layers (those of `sparsity`) have
        now, for fine-tuning an already pruned model: they grew back, and cost EBOPs again."""
        p = cls(model, sparsity, epochs=1)
        with torch.no_grad():
            p.masks = {n: (w != 0).to(w.dtype) for n, w in p.params.items()}
        p.on_epoch_end = lambda epoch: p.apply()
        return p

    def sparsity(self) -> dict[str, float]:
        """Measured fraction of exactly-zero weights per pruned layer."""
        return {n: float((p == 0).float().mean()) for n, p in self.params.items()}
