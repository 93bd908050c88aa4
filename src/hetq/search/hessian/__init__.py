"""Hessian-aware bit allocation (HAWQ-V2/V3 style): a whole front of configurations in seconds.

1. `hessian_traces`: for each quantizable tensor T (kernel and bias of every Linear/Conv layer,
   the output of every activation layer) the average Hessian trace tr(H_TT) / numel(T) of the
   batch-mean loss on the float model, by Hutchinson's method: tr(H) = E[v^T H v] over
   Rademacher vectors v (entries +-1), with H v from double back-propagation (no Hessian is
   materialised). Each tensor gets its own product H_TT v (its Hessian block alone: the
   cross-block terms of one product over all tensors vanish on average but would swamp small
   tensors such as biases in variance). Iterations stop when every estimate's standard
   error is below `tol` (relative, default 5%).
   Activation traces are per sample: tr(H_aa) / numel(a) x batch size, i.e. the trace of one
   sample's loss w.r.t. its own activations, per element. `top_eigenvalue`: the largest
   eigenvalue of each tensor's Hessian block by power iteration.
2. `sensitivities`: the second-order loss increase of each candidate quantizer Q,
       weights:      Omega = max(trace, 0) x ||Q(W) - W||^2
       activations:  Omega = max(trace, 0) x mean over samples of ||Q(z) - act(z)||^2
   (z: the activation layer's input; Q replaces the layer, so Q(z) - act(z) is the error of
   its output), summed over the layers a search parameter (group) controls.
3. `cost_table`: the cost (energy pJ, bits, EBOPs, LUT) as a function of the choices. The
   cost model is a sum of per-layer rows; each row depends on a few groups (a weight layer's
   energy on its kernel, its bias and the activation feeding it, which set the multiplier and
   accumulator widths; its EBOPs on kernel bits x input bits), found by varying one group at a
   time from a base configuration. Rows of one group are tabulated per choice, rows of
   several groups per joint choice (large tables only when the row is not a sum of one-group
   terms); random configurations built from scratch then check the table against the cost
   model. Linearising the jet MLP's energy (EBOPs) around one configuration instead errs by up
   to ~50 % (~300 %), so the joint tables matter.
4. `allocate`: one choice per group minimising sum Omega subject to cost <= budget, an integer
   linear program solved exactly by `scipy.optimize.milp` (HiGHS): binary x[g, c] one-hot per
   group; a joint row's cost enters through continuous z[row, a] whose marginals equal the x
   (exact for binary x). Among equally good choices the cheapest is taken. `sweep` solves it
   for log-spaced budgets between the cheapest configuration and the unconstrained optimum.
5. `hessian_prior`: all of it on a search space, returning Optuna parameter dicts for
   `study.enqueue_trial(params)` (`HessianPrior.params`) and the hetq models they build.
"""

from .costs import GOALS, CostTable, cost_table
from .ilp import Allocation, allocate, sweep
from .prior import HessianPrior, hessian_prior, prior_params, sensitivities, to_models
from .traces import Traces, activation_modules, hessian_traces, quantizable_params, top_eigenvalue

__all__ = ["GOALS", "Allocation", "CostTable", "HessianPrior", "Traces", "activation_modules",
           "allocate", "cost_table", "hessian_prior", "hessian_traces", "prior_params",
           "quantizable_params", "sensitivities", "sweep", "to_models", "top_eigenvalue"]
