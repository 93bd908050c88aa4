"""Population training: K candidate MLPs of one layer sequence trained in one batched pass.

For tiny models a training step costs per-step overhead (Python, kernel launches, the
optimiser loop) more than arithmetic. `Population` stacks K members: the weights of a dense
layer are one `[K, out, in]` parameter (biases `[K, out]`) and a step is one batched matmul
(`torch.baddbmm`) per layer for all members, so the overhead is paid once for K.

* Quantizers: each member keeps its own. Per layer field (kernel, bias, activation) members are
  grouped by quantizer kind. Plain `quantized_bits` / `quantized_relu` members (scalar
  arguments, fixed alpha, deterministic) form ONE group whatever their bits/integer: these
  become per-member tensors (the [G, 1] constants 2**(bits - integer), grid step and clip
  bounds derived from them), so one call quantizes the whole group, with exactly the values
  and gradients each member's own quantizer gives (and the values of the core quantizer with
  tensor-valued bits/integer of shape [G, 1, 1]). Other element-wise quantizers (ternary,
  binary with a fixed alpha, po2, float activations) are grouped by identical configuration
  and called once on their stacked rows. Quantizers that reduce over the tensor
  (alpha='auto'/'auto_po2' scales) or draw random numbers run per member on its own unpadded
  slice. Mixed kinds in one field: the groups are gathered, computed and scattered back
  (`mixed="group"`, the default), or every group is computed over the whole stack and rows
  are selected with `torch.where` (`mixed="select"`). `benchmarks/population.py` times both on
  a population with five kinds and two widths: grouping was faster (about 1.1x per epoch at
  K = 16 on 2 CPU cores; select does each element-wise kind's work for all K rows), so it is
  the default.
* Widths: members with fewer units are zero-padded to the largest width; a 0/1 mask on the
  quantized weights and biases keeps the padding at zero, in the forward pass and in the
  gradients, so a padded member computes exactly what it computes alone.
* Training (`fit_population`) follows `hetq.train.fit` member by member: the same batch order
  for the same seed, the summed loss (each member's parameters get only their own loss's
  gradient), Adam/AdamW with per-member learning rate, schedule and weight decay, per-member
  magnitude pruning (sparsity masks), early stopping and best-epoch restore. A member that is
  finished (early stopping, or a search pruner saying stop) leaves the stack at the end of the
  epoch, so it stops costing compute.
* `extract(pop, k)` gives member k back as an ordinary hetq model with identical weights.

Equivalence: with the same seed a member trained in a population follows the trajectory of
`fit` on that model alone up to float rounding (batched matmuls may sum in another order);
quantization can turn such a rounding difference into a grid step when a weight sits on a
rounding boundary, so compare after a few steps or compare trajectories statistically.
Stochastic quantizers and dropout draw their random numbers in another order than `fit`.

Supported: `nn.Sequential` members made of `nn.Linear` / `QDense` (`QLinear`), `QActivation`
(also on the input), element-wise `torch.nn` activations (ReLU, Tanh, Sigmoid, ...),
Identity, Flatten (before the first dense layer), Dropout. Anything else raises a ValueError
naming the layer.
"""

from .fit import MemberResult, ReportFailed, fit_population
from .layers import Population, extract

__all__ = ["MemberResult", "Population", "ReportFailed", "extract", "fit_population"]
