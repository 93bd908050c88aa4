"""`fit_population`: training K stacked members as `hetq.train.fit` trains one."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..loop import (
    TrainResult,
    _train_val_tensors,
    as_dataset,
    batch_bounds,
    check_counts,
    check_hyperparameters,
    check_model_fits,
    check_seed,
    class_names,
    plain_number,
    resolve_device,
    seeded,
)
from ..metrics import classification_metrics, log_odds, per_class_metrics
from ..tasks import Classify
from .layers import Population


class _Adam:
    """Adam / AdamW over stacked [K, ...] parameters with a learning rate and weight decay per
    member row; the operations of `torch.optim.Adam`'s single-tensor path in the same order
    (Adam is element-wise, so members stay independent)."""

    def __init__(self, params, decoupled: bool, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.decoupled = decoupled
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def plan(self, lrs: list[float], wds: list[float], steps: int):
        """Per-step, per-member constants of the next `steps` steps, built on the host in
        double precision as `torch.optim.Adam` does (-lr / (1 - beta1**t), AdamW's
        1 - lr * wd) and sent to the device once, so the steps never wait on the host."""
        dev = self.params[0].device
        ts = range(self.t + 1, self.t + steps + 1)
        neg = torch.tensor([[-lr / (1 - self.b1 ** t) for lr in lrs] for t in ts], device=dev)
        decay = None
        if any(wds):
            row = [1 - lr * wd for lr, wd in zip(lrs, wds)] if self.decoupled else wds
            decay = torch.tensor(row, device=dev)
        return neg, decay

    @torch.no_grad()
    def step(self, neg_step: torch.Tensor, decay: torch.Tensor | None) -> None:
        """One step; neg_step [K] and decay [K] (or None) are one row of `plan`."""
        self.t += 1
        bc2_sqrt = (1 - self.b2 ** self.t) ** 0.5
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if g is None:
                continue
            shape = [-1] + [1] * (p.dim() - 1)
            if decay is not None:
                if self.decoupled:
                    p.mul_(decay.view(shape))
                else:
                    g = g.addcmul(p, decay.view(shape))
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.addcdiv_(m * neg_step.view(shape), denom)

    def keep(self, rows: list[int], params: list[nn.Parameter]) -> None:
        """Keep the state of the given member rows; `params` are the re-packed parameters."""
        self.m = [m[rows].clone() for m in self.m]
        self.v = [v[rows].clone() for v in self.v]
        self.params = list(params)


def _lr_table(lr: float, epochs: int, schedule: str) -> list[float]:
    """The learning rate of each epoch as `fit`'s `CosineAnnealingLR(T_max=epochs)` (eta_min 0)
    steps it: the same recursive formula, so the same floats."""
    out = [lr]
    for e in range(1, epochs if schedule == "cosine" else 0):
        out.append((1 + math.cos(math.pi * e / epochs))
                   / (1 + math.cos(math.pi * (e - 1) / epochs)) * (out[-1] - 0.0) + 0.0)
    return out + [lr] * (epochs - len(out))


def _per_member(name: str, value, K: int) -> list:
    """One value per member, each as given but for numpy and 0-d tensor scalars, which become
    Python numbers (np.int64(3) as a seed, torch.tensor(1e-3) as a learning rate)."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = list(value)
    if isinstance(value, (list, tuple)):
        if len(value) != K:
            raise ValueError(f"{name}: {len(value)} values for {K} members")
        return [plain_number(v) for v in value]
    return [plain_number(value)] * K


class ReportFailed(Exception):
    """Raised by a `report` for an error that is the caller's, not a reason to stop the
    member (a search whose database is gone): it ends the training, as an OSError does."""


@dataclass
class MemberResult(TrainResult):
    """`TrainResult` of one member, plus how it ended and its final state dict."""

    stopped_by_report: bool = False  # a report (search pruner) stopped it
    stop_reason: str = ""  # why it left before the last epoch
    diverged: bool = False  # non-finite training loss (`fit` raises FloatingPointError)
    sparsity: dict[str, float] = field(default_factory=dict)
    state: dict | None = field(default=None, repr=False)


class _Sparsity:
    """Per-member magnitude pruning with `MagnitudePruner`'s schedule and masks."""

    def __init__(self, pop: Population, targets: list, epochs: int, ramp_fraction: float):
        dense = pop.dense()
        self.targets = [dict(t or {}) for t in targets]
        for k, t in enumerate(self.targets):
            for name, s in t.items():
                if name not in dense:
                    raise ValueError(f"member {k}: sparsity given for {name!r}, which is not a "
                                     f"dense layer (dense layers: {sorted(dense)})")
                if not 0.0 <= s < 1.0:
                    raise ValueError(f"member {k}: sparsity for {name!r} must be in [0, 1), "
                                     f"got {s!r}")
        self.layers = sorted({n for t in self.targets for n, s in t.items() if s > 0})
        self.epochs, self.ramp = epochs, ramp_fraction
        self.masks: dict[str, torch.Tensor] = {}  # [K, out, in], set after the first epoch

    @torch.no_grad()
    def apply(self, pop: Population) -> None:
        dense = pop.dense()
        for name, mask in self.masks.items():
            dense[name].weight.mul_(mask)

    @torch.no_grad()
    def on_epoch_end(self, pop: Population, epoch: int) -> None:
        if not self.layers:
            return
        # the schedule and the masks are MagnitudePruner's own functions (imported here only:
        # hetq.search builds on hetq.train, not the other way round)
        from ...search.sparsity import magnitude_mask, polynomial_sparsity

        dense = pop.dense()
        for name in self.layers:
            layer = dense[name]
            mask = self.masks.get(name, torch.ones_like(layer.weight))
            for r, k in enumerate(pop.ids):
                final = self.targets[k].get(name, 0.0)
                if final > 0:
                    o, i = layer.shapes[r]
                    s = polynomial_sparsity(final, epoch, self.epochs, self.ramp)
                    mask[r, :o, :i] = magnitude_mask(layer.weight[r, :o, :i], s)
            self.masks[name] = mask
        self.apply(pop)

    def keep(self, rows: list[int]) -> None:
        self.masks = {n: m[rows].clone() for n, m in self.masks.items()}

    def member_masks(self, pop: Population, row: int) -> dict[str, torch.Tensor]:
        dense = pop.dense()
        out = {}
        for name, mask in self.masks.items():
            o, i = dense[name].shapes[row]
            if self.targets[pop.ids[row]].get(name, 0.0) > 0:
                out[name] = mask[row, :o, :i].cpu()
        return out


def fit_population(models, data, *, epochs: int = 30, batch_size: int = 1024,
                   lr: float | list[float] = 1e-3, optimizer: str = "adam",
                   weight_decay: float | list[float] = 0.0, schedule: str = "cosine",
                   patience: int | list[int | None] | None = None,
                   seed: int | list[int] = 0, sparsity: list[dict | None] | None = None,
                   ramp_fraction: float = 0.7, task=None, report=None,
                   restore_best: bool = True, device="cpu", val_metrics: str = "task",
                   mixed: str = "group", progress: bool = False) -> list[MemberResult]:
    """Train K members together; member k as `fit(models[k], data, ...)` with its own values.

    models: a list of K models (updated in place with their trained weights) or a
        `Population` (updated in place; all K members are back in it at the end).
    lr, weight_decay, patience, seed: one value for all members or a list of K. Members with
        the same seed share each batch (one input tensor); different seeds give each member
        its own batch order (the inputs are gathered per member).
    sparsity: per member None or {layer: final sparsity}: magnitude pruning with the schedule
        of `hetq.search.sparsity.MagnitudePruner` (masks at each epoch end, applied after
        every step; the final masks are applied to the restored best weights).
    report: called as report(k, epoch, val_metrics) after each of member k's epochs; a True
        return value or a raised exception (recorded in `stop_reason`) stops member k (an Optuna
        pruner), except an OSError or `ReportFailed`, which ends the training. A stopped
        member keeps its weights of that epoch, as `fit` does when its report raises.
    val_metrics: "task" (every metric of the task, as `fit`) or "fast" (loss and accuracy).
    progress: a bar over the epochs (a search with --population printed nothing while a
        batch trained).
    mixed: "group" or "select", how quantizers of different kinds in one layer run (module
        docstring). optimizer, schedule, task, device, restore_best: as in `fit`.
    Returns one `MemberResult` per member, in the order given.
    """
    epochs, batch_size = plain_number(epochs), plain_number(batch_size)
    check_counts(epochs=epochs, batch_size=batch_size)  # (2.5 was a TypeError from range)
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"optimizer {optimizer!r}; expected 'adam' or 'adamw'")
    if schedule not in ("cosine", "none"):
        raise ValueError(f"schedule {schedule!r}; expected 'cosine' or 'none'")
    if val_metrics not in ("task", "fast"):
        raise ValueError(f"val_metrics {val_metrics!r}; expected 'task' or 'fast'")
    given_pop = isinstance(models, Population)
    pop = models if given_pop else Population(models, mixed=mixed)
    if given_pop and pop.ids != list(range(pop.size)):
        raise ValueError("the population has lost members; train a complete population")
    K = pop.size
    if sparsity is not None and len(sparsity) != K:
        raise ValueError(f"sparsity: {len(sparsity)} entries for {K} members")
    stacked = {id(p) for p in pop.stacked_parameters()}
    other = [n for n, p in pop.named_parameters() if p.requires_grad and id(p) not in stacked]
    if other:
        raise ValueError(f"population training trains dense weights and biases only; "
                         f"trainable quantizer/activation parameters found: {other}")
    # as given, checked as `fit` checks them (patience 1.5 became 1, seed -1 was taken, lr
    # '0.1' became 0.1)
    lrs = _per_member("lr", lr, K)
    wds = _per_member("weight_decay", weight_decay, K)
    pats = _per_member("patience", patience, K)
    seeds = _per_member("seed", seed, K)
    listed = any(isinstance(v, (list, tuple, np.ndarray))
                 for v in (lr, weight_decay, patience, seed))
    for k in range(K):  # (a member is named when the values were given per member)
        try:
            check_seed(seeds[k])
        except ValueError as e:
            raise ValueError(f"{e}{f' (member {k})' if listed else ''}") from None
        check_hyperparameters(lrs[k], wds[k], pats[k], k if listed else None)
    sparse = _Sparsity(pop, sparsity if sparsity is not None else [None] * K, epochs,
                       ramp_fraction)
    data = as_dataset(data)
    task = task or Classify()
    dev = resolve_device(device)
    pop.to(dev)
    Xtr, ytr, Xva, yva = _train_val_tensors(data, task, dev)
    for k, m in enumerate([] if given_pop else models):  # (each is zero-padded in the stack:
        # one of other input or output width trained without a word, on other data)
        try:
            check_model_fits(m, Xtr[:2].to(next(m.parameters()).device), task, data)
        except ValueError as e:
            raise ValueError(f"member {k}: {e}") from None
    classes = class_names(data)
    yva_np = yva.cpu().numpy()
    lr_tables = [_lr_table(v, epochs, schedule) for v in lrs]
    opt = _Adam(pop.stacked_parameters(), decoupled=optimizer == "adamw")
    gens = {s: torch.Generator().manual_seed(s) for s in sorted(set(seeds))}
    # stochastic quantizers draw from the global generators: seeded for the training, then
    # given back as they were (the caller's random stream is not reseeded)
    with seeded(seeds[0], dev):
        results = [MemberResult() for _ in range(K)]
        best: list[dict | None] = [None] * K
        final: list[dict | None] = [None] * K
        n = Xtr.shape[0]
        t0 = time.perf_counter()
        fast_ce = type(task) is Classify  # its loss is _cross_entropy's

        def finish(r: int, k: int, restore: bool) -> None:
            res = results[k]
            state = best[k] if restore and restore_best and best[k] is not None \
                else pop.member_state(r)
            masks = sparse.member_masks(pop, r)
            if restore and restore_best and best[k] is not None:
                for name, mask in masks.items():  # MagnitudePruner.apply() after the restore
                    state[f"{name}.weight"] = state[f"{name}.weight"] * mask
            final[k] = state
            res.state = state
            res.seconds = time.perf_counter() - t0
            w = {name: state[f"{name}.weight"] for name in masks}
            res.sparsity = {name: float((v == 0).float().mean()) for name, v in w.items()}

        from ...progress import bar

        epoch_bar = bar(range(epochs), desc=f"population of {K}", unit="epoch", leave=False,
                        disable=not progress)
        for epoch in epoch_bar:
            if pop.size == 0:
                break
            ids = list(pop.ids)
            Ka = len(ids)
            pop.train()
            bounds = batch_bounds(n, batch_size)  # (as `fit`'s: no last batch of one sample)
            neg_steps, decay = opt.plan([lr_tables[k][epoch] for k in ids], [wds[k] for k in ids],
                                        len(bounds))
            # one permutation per distinct seed, from that seed's generator (members only leave,
            # so each generator has drawn one permutation per epoch, as in `fit`)
            perms = {s: torch.randperm(n, generator=gens[s])
                     for s in sorted({seeds[k] for k in ids})}
            shared = len(perms) == 1
            perm = next(iter(perms.values())) if shared else \
                torch.stack([perms[seeds[k]] for k in ids])
            perm = perm.to(dev)
            total = torch.zeros(Ka, device=dev)
            for j, (i, stop) in enumerate(bounds):
                if shared:
                    idx = perm[i:stop]
                    xb, yb = Xtr[idx], ytr[idx]
                else:
                    idx = perm[:, i:stop]
                    xb, yb = Xtr[idx], ytr[idx]  # [Ka, B, ...], [Ka, B]
                B = idx.shape[-1]
                out = pop(xb, per_member=not shared)
                if fast_ce and len(set(pop.n_out)) == 1:
                    per = _cross_entropy(out, yb)
                else:
                    per = torch.stack([task.loss(out[r, :, :pop.n_out[r]],
                                                 xb if shared else xb[r],
                                                 yb if shared else yb[r]) for r in range(Ka)])
                opt.zero_grad()
                per.sum().backward()
                opt.step(neg_steps[j], decay)
                if sparse.masks:
                    sparse.apply(pop)
                total += per.detach() * B
            sparse.on_epoch_end(pop, epoch)
            train_loss = (total / n).tolist()
            vals = _validate(pop, Xva, yva, yva_np, task, classes, val_metrics)
            stop_rows = []
            for r, k in enumerate(ids):
                res, val = results[k], vals[r]
                res.history.append({"epoch": epoch, "loss": train_loss[r],
                                    **{f"val_{a}": b for a, b in val.items()}})
                if not math.isfinite(train_loss[r]) or not math.isfinite(val["loss"]):
                    # (a last step can leave non-finite weights behind a finite loss: the
                    # validation outputs are then NaN)
                    res.diverged = True
                    res.stop_reason = (f"training loss {train_loss[r]} at epoch {epoch}"
                                       if not math.isfinite(train_loss[r]) else
                                       f"validation loss {val['loss']} at epoch {epoch}")
                    stop_rows.append((r, False))
                    continue
                if val["loss"] < res.best_val_loss:
                    res.best_val_loss, res.best_epoch = val["loss"], epoch
                    if restore_best:
                        best[k] = pop.member_state(r)
                if report is not None:
                    try:
                        stop = bool(report(k, epoch, val))
                        why = f"report returned True after epoch {epoch}"
                    except (OSError, ReportFailed):  # (a full disk under the study's
                        raise  # journal, its database gone: the search's error, not a stop)
                    except Exception as e:  # noqa: BLE001 - fit's report raises to stop a trial
                        stop, why = True, f"report raised {e!r} after epoch {epoch}"
                    if stop:
                        res.stopped_by_report, res.stop_reason = True, why
                        stop_rows.append((r, False))
                        continue
                if pats[k] is not None and epoch - res.best_epoch >= pats[k]:
                    res.stopped_early = True
                    res.stop_reason = f"no better validation loss for {pats[k]} epoch(s)"
                    stop_rows.append((r, True))
            for r, restore in stop_rows:
                finish(r, ids[r], restore)
            if stop_rows:  # re-pack: the stopped members leave the stack and the optimiser
                gone = {r for r, _ in stop_rows}
                rows = [r for r in range(Ka) if r not in gone]
                sparse.keep(rows)
                if rows:
                    pop.keep(rows)
                    opt.keep(rows, pop.stacked_parameters())
                else:
                    pop.ids = []  # nobody left; the stack is rebuilt or dropped below
        epoch_bar.close()
        for r, k in enumerate(pop.ids):
            finish(r, k, True)
        if given_pop:  # every member back in the stack, with its final weights
            ms = []
            for k in range(K):
                m = copy.deepcopy(pop.templates[k])
                m.load_state_dict(final[k])
                ms.append(m)
            pop._stack(ms, list(range(K)))
            pop.to(dev)
        else:
            for k, m in enumerate(models):
                m.load_state_dict(final[k])
                m.eval()
        pop.eval()
        return results


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each member, [K, B, C] logits, labels [B] or [K, B] -> [K]:
    logsumexp(z) - z_y with z = logits - max. Written out because `F.cross_entropy` over
    [K * B, 5] (a softmax over 5 classes per row) measured 3x slower here."""
    K, B, _ = logits.shape
    z = logits - logits.detach().amax(-1, keepdim=True)
    idx = (y.view(1, B, 1).expand(K, B, 1) if y.dim() == 1 else y.view(K, B, 1))
    return (z.exp().sum(-1).log() - z.gather(-1, idx).squeeze(-1)).mean(1)


@torch.no_grad()
def _validate(pop: Population, Xva, yva, yva_np, task, classes, how: str
              ) -> list[dict[str, float]]:
    """Each member's validation metrics and loss, as `hetq.train.loop.evaluate_tensors` gives
    them (`how="fast"`: loss, and accuracy for classification)."""
    pop.eval()
    Ka, N = pop.size, Xva.shape[0]
    # about 16k rows of activations per chunk (K x chunk): 8192 samples per chunk, as `fit`
    # uses, measured 2.5x (K = 16) to 3x (K = 64) slower (tensors far larger than the caches)
    batch_size = min(8192, max(256, 16384 // Ka))
    classify = type(task) is Classify and len(set(pop.n_out)) == 1
    total = torch.zeros(Ka, device=Xva.device)
    outs = []
    for i in range(0, N, batch_size):
        xb, yb = Xva[i:i + batch_size], yva[i:i + batch_size]
        out = pop(xb)  # [Ka, b, C]
        if classify:
            total += _cross_entropy(out, yb) * xb.shape[0]
        else:
            total += torch.stack([task.loss(out[r, :, :pop.n_out[r]], xb, yb)
                                  for r in range(Ka)]) * xb.shape[0]
        outs.append(out if how == "task" or classify else None)
    loss = (total / max(1, N)).tolist()
    if how == "fast":
        if not classify:
            return [{"loss": v} for v in loss]
        logits = torch.cat(outs, 1)
        acc = (logits.argmax(-1) == yva).float().mean(1).tolist()
        return [{"accuracy": a, "loss": v} for a, v in zip(acc, loss)]
    if classify:
        scores = log_odds(torch.cat(outs, 1)).cpu()  # (as Classify.scores: float64 log-odds)
        res = _classification_metrics(scores, yva_np, classes, task.fpr)
    else:
        res = []
        for r in range(Ka):
            s = torch.cat([task.scores(o[r, :, :pop.n_out[r]], Xva[i:i + batch_size])
                           .float().cpu() for o, i in zip(outs, range(0, N, batch_size))])
            res.append(task.metrics(s.numpy(), yva_np, classes))
    for m, v in zip(res, loss):
        m["loss"] = v
    return res


def _classification_metrics(scores: torch.Tensor, y: np.ndarray, classes: list[str],
                            fpr: float) -> list[dict[str, float]]:
    """`hetq.train.metrics.classification_metrics` of K members, scores [K, N, C].

    Its cost is sorting: 2 C stable argsorts of N scores per member. Here one multi-threaded
    `torch.sort` orders every member's class scores; the metric functions then get presorted
    columns, where their own stable argsort is nearly free. The ROC points sit at the last
    index of each distinct score, which the order within ties does not change, so the values
    are exactly those of `classification_metrics`. A member with NaN scores (a diverged one,
    which fails) gets a NaN accuracy only."""
    if not torch.isfinite(scores).all():  # NaN sorts differently in torch and numpy
        return [{"accuracy": float("nan")} if torch.isnan(p).any() else
                classification_metrics(p.numpy(), y, classes, fpr) for p in scores]
    srt = torch.sort(scores.transpose(1, 2), dim=-1, descending=True)
    values, order = srt.values.numpy(), srt.indices.numpy()
    pred = scores.argmax(-1).numpy()
    out = []
    for r in range(scores.shape[0]):
        m = {"accuracy": float((pred[r] == y).mean())}
        m.update(per_class_metrics(lambda k, lab, r=r: (values[r, k], lab[order[r, k]]),
                                   y, classes, fpr))
        out.append(m)
    return out
