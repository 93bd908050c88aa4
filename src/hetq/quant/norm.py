"""Quantized batch normalisation and batch-norm-folded dense/conv layers (spec §2.3, §2.4).

QBatchNorm:  inv = Qgamma * rsqrt(Qvar + eps)  (then Qinv(inv) if an inverse quantizer is set),
             y = x * inv + (Qbeta - Qmean * inv).
Training uses the (quantized) batch moments; the running statistics are updated with the
unquantized batch moments (PyTorch convention: running = (1 - m) running + m batch, unbiased
variance). hetq's defaults are no quantizers (QKeras defaults to po2 quantizers).

Folded layers (QDenseBatchnorm, QConv2dBatchnorm) hold W, b and the BN parameters and compute
    inv = gamma * rsqrt(var + eps),  W_fold = inv * W,  b_fold = inv * (b - mean) + beta,
    y = act(op(x, Qk(W_fold)) * corr + Qb(b_fold))
"ema_stats_folding" (default, TFLite style): W is folded with the moving variance; while the BN
trains, corr = sqrt(mv_var + eps) * rsqrt(batch_var + eps) and b_fold uses the batch moments.
"batch_stats_folding": W and b are folded with the batch moments while training. In eval mode
both use the moving statistics (corr = 1), which is what hardware computes. As in the
reference and float BN, training differentiates through the batch moments; the moving-statistic
updates stay out of autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import QLayer, _qw


def _check_momentum(layer: str, momentum) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not 0 <= momentum <= 1:
        raise ValueError(f"{layer}: momentum={momentum!r}; expected a number in [0, 1] (the "
                         "running statistics' update weight; a cumulative average, "
                         "momentum=None, is not supported)")


def _batch_count(layer: nn.Module, y: torch.Tensor) -> float:
    """Values per channel in a training batch; one is refused (as torch's BatchNorm does):
    its variance is 0, the output is beta and the running variance is pulled towards 0."""
    if y.dim() < 2 or y.shape[1] != layer.running_mean.numel():
        raise ValueError(f"{type(layer).__name__}: input of shape {tuple(y.shape)}; expected "
                         f"(N, {layer.running_mean.numel()}, ...)")
    n = y.numel() / y.shape[1]
    if n <= 1:
        raise ValueError(f"{type(layer).__name__}: a training batch of shape "
                         f"{tuple(y.shape)} has one value per channel; batch norm needs more "
                         "(a last batch of one sample: drop it or change the batch size)")
    return n


class QBatchNorm(QLayer, nn.modules.batchnorm._BatchNorm):
    """Batch norm over (N, C) or (N, C, ...) with quantizable gamma/beta/mean/variance."""

    quantizer_fields = ("gamma", "beta", "mean", "variance", "inverse")

    def __init__(self, num_features, eps=1e-3, momentum=0.01, affine=True, gamma_quantizer=None,
                 beta_quantizer=None, mean_quantizer=None, variance_quantizer=None,
                 inverse_quantizer=None):
        _check_momentum("QBatchNorm", momentum)
        nn.modules.batchnorm._BatchNorm.__init__(self, num_features, eps, momentum, affine, True)
        if inverse_quantizer is not None and (gamma_quantizer or variance_quantizer):
            raise ValueError("QBatchNorm: inverse_quantizer excludes gamma_quantizer and "
                             "variance_quantizer (the product is quantized instead)")
        self._init_quantizers(gamma=gamma_quantizer, beta=beta_quantizer, mean=mean_quantizer,
                              variance=variance_quantizer, inverse=inverse_quantizer)

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"QBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def _moments(self, x):
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        if self.training:
            n = _batch_count(self, x)
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))
                self.num_batches_tracked += 1
            return mean, var
        return self.running_mean, self.running_var

    def folded_scale_shift(self, mean, var):
        """(inv, shift) with y = x * inv + shift, all quantizers applied."""
        q = self.quantizers
        var_q = _qw(q["variance"], var)
        mean_q = _qw(q["mean"], mean)
        gamma = self.weight if self.affine else torch.ones_like(var)
        beta = self.bias if self.affine else torch.zeros_like(mean)
        inv = torch.rsqrt(var_q + self.eps) * _qw(q["gamma"], gamma)
        if q["inverse"] is not None:
            inv = q["inverse"](inv)
        return inv, _qw(q["beta"], beta) - mean_q * inv

    def forward(self, x):
        self._check_input_dim(x)
        mean, var = self._moments(x)
        inv, shift = self.folded_scale_shift(mean, var)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * inv.view(shape) + shift.view(shape)

    def quantized_weights(self):
        out = {}
        for f, t in (("gamma", self.weight), ("beta", self.bias), ("mean", self.running_mean),
                     ("variance", self.running_var)):
            if t is not None:
                out[f] = _qw(self.quantizers[f], t)
        return out


class _FoldedBatchnorm(QLayer):
    """Shared folding logic; subclasses provide `_op(x, w)` and the weight layout."""

    quantizer_fields = ("kernel", "bias", "activation")
    folded_bias = True  # (its bias quantizer quantizes b_fold, which bias=False layers have too)
    FOLDING_MODES = ("ema_stats_folding", "batch_stats_folding")

    def _init_bn(self, num_features, eps, momentum, ema_freeze_delay, folding_mode):
        _check_momentum(type(self).__name__, momentum)
        if folding_mode not in self.FOLDING_MODES:
            raise ValueError(f"folding_mode={folding_mode!r}; expected one of "
                             f"{', '.join(self.FOLDING_MODES)}")
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        # the reference's training-step counter starts at -1 and is tested before it is
        # incremented, so the BN trains on the first ema_freeze_delay + 2 training calls
        self.register_buffer("step", torch.full((), -1, dtype=torch.long))
        self.eps, self.momentum = eps, momentum
        self.ema_freeze_delay = ema_freeze_delay
        self.folding_mode = folding_mode

    def _channel_view(self, v):
        return v.view([-1] + [1] * (self.weight.dim() - 1))

    def _bn_training(self) -> bool:
        if not self.training:
            return False
        d = self.ema_freeze_delay
        return d is None or d < 0 or int(self.step) <= d

    def get_folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_fold, b_fold) with the moving statistics, before quantization."""
        inv = self.gamma * torch.rsqrt(self.running_var + self.eps)
        b = self.bias if self.bias is not None else torch.zeros_like(inv)
        return self._channel_view(inv) * self.weight, inv * (b - self.running_mean) + self.beta

    def quantized_weights(self):
        w, b = self.get_folded_weights()
        return {"kernel": _qw(self.kernel_quantizer, w), "bias": _qw(self.bias_quantizer, b)}

    def forward(self, x):
        bias = self.bias if self.bias is not None else torch.zeros_like(self.gamma)
        bn_training = self._bn_training()
        if self.training:
            self.step += 1
        if bn_training:  # the gradient flows through the batch moments (as in float BN)
            y = self._op(x, self.weight) + self._channel_bias(bias, x)
            dims = [0] + list(range(2, y.dim()))
            bmean = y.mean(dim=dims)
            bvar = y.var(dim=dims, unbiased=False)
            with torch.no_grad():
                n = _batch_count(self, y)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * bmean)
                self.running_var.mul_(1 - m).add_(m * bvar * n / (n - 1))
        mv_inv = self.gamma * torch.rsqrt(self.running_var + self.eps)
        if bn_training and self.folding_mode == "batch_stats_folding":
            inv = self.gamma * torch.rsqrt(bvar + self.eps)
            w_fold = self._channel_view(inv) * self.weight
            b_fold = inv * (bias - bmean) + self.beta
            corr = None
        elif bn_training:  # ema_stats_folding
            w_fold = self._channel_view(mv_inv) * self.weight
            b_fold = self.gamma * torch.rsqrt(bvar + self.eps) * (bias - bmean) + self.beta
            corr = torch.sqrt(self.running_var + self.eps) * torch.rsqrt(bvar + self.eps)
        else:
            w_fold = self._channel_view(mv_inv) * self.weight
            b_fold = mv_inv * (bias - self.running_mean) + self.beta
            corr = None
        wq = _qw(self.kernel_quantizer, w_fold)
        bq = _qw(self.bias_quantizer, b_fold)
        y = self._op(x, wq)
        if corr is not None:
            y = y * self._channel_bias(corr, y)
        y = y + self._channel_bias(bq, y)
        return self._act(y)

    @staticmethod
    def _channel_bias(v, like):
        return v.view([1, -1] + [1] * (like.dim() - 2))


class QDenseBatchnorm(_FoldedBatchnorm, nn.Linear):
    """Dense layer with a batch norm folded into its weights (training and inference)."""

    def __init__(self, in_features, out_features, bias=True, kernel_quantizer=None,
                 bias_quantizer=None, activation=None, eps=1e-3, momentum=0.01,
                 ema_freeze_delay=None, folding_mode="ema_stats_folding"):
        nn.Linear.__init__(self, in_features, out_features, bias)  # (b_fold always exists)
        self._init_bn(out_features, eps, momentum, ema_freeze_delay, folding_mode)
        self._init_quantizers(kernel=kernel_quantizer, bias=bias_quantizer, activation=activation)

    def _op(self, x, w):
        return F.linear(x, w)


class QConv2dBatchnorm(_FoldedBatchnorm, nn.Conv2d):
    """Conv2d with a batch norm folded into its weights (training and inference)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, kernel_quantizer=None, bias_quantizer=None,
                 activation=None, eps=1e-3, momentum=0.01, ema_freeze_delay=None,
                 folding_mode="ema_stats_folding"):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias)  # (b_fold always exists)
        self._init_bn(out_channels, eps, momentum, ema_freeze_delay, folding_mode)
        self._init_quantizers(kernel=kernel_quantizer, bias=bias_quantizer, activation=activation)

    def _op(self, x, w):
        return self._conv_forward(x, w, None)
