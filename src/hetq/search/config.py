"""`SearchConfig`: everything that defines a search, saved as `search.yaml` in the run folder
and as a study attribute, so `hetq worker`, `hetq report` and resumed runs rebuild it."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..files import write_whole
from .objectives import GOALS

OBJECTIVES = ("forgiving", "pareto")
STRATEGIES = ("optuna", "hessian", "gradient")
PRIORS = ("none", "hessian")
SAMPLERS = ("tpe", "random", "grid", "gp", "nsga2")  # the Optuna sampler and pruner names
PRUNERS = ("none", "median", "asha", "hyperband")
GRANULARITIES = ("weight", "channel", "layer")  # gradient: what shares a weight bit-width
ACT_GRANULARITIES = ("neuron", "layer")  # gradient: what shares an input / activation one


_KINDS = {  # annotation -> (what the message asks for, test)
    "int": ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
}


def _type_problem(annotation: str, value) -> str | None:
    """What `value` should have been for a field annotated `annotation` (None: it fits):
    int, float, str, bool, list[...] of them, each optionally `| None`; dicts are checked
    where they are used."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        return None if "None" in kinds else "a value (not null)"
    kind = kinds[0]
    if kind.startswith("list["):
        item = kind[5:-1]
        if not isinstance(value, (list, tuple)):
            return f"a list of {_KINDS[item][0].split(' ', 1)[1]}s"
        bad = [v for v in value if not _KINDS[item][1](v)]
        return f"{_KINDS[item][0]} for each item (got {bad[0]!r})" if bad else None
    if kind in _KINDS and not _KINDS[kind][1](value):
        if kind == "float" and isinstance(value, str) and "e" in value.lower():
            try:
                float(value)
                return "a number (YAML reads 3e-3 as a string; write 3.0e-3)"
            except ValueError:
                pass
        return _KINDS[kind][0]
    return None


MAX_PRIOR_CONFIGS = 1000


@dataclass
class SearchConfig:
    """Settings of one search (defaults: the paper's energy-goal AutoQKeras run)."""

    model: str = "jet_mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "jets-sim"
    study_name: str = "hetq"
    objective: str = "forgiving"  # single score (forgiving factor) or a Pareto front
    goal: str = "energy"  # cost: energy | bits | ebops | lut
    metric: str = "accuracy"  # any key of hetq.train.evaluate's metrics
    delta_p: float = 8.0
    delta_n: float = 8.0
    rate: float = 2.0
    stress: float = 1.0
    min_reduction: float | None = None  # hard constraint: reference cost / trial cost >= this
    max_metric_loss: float | None = None  # hard constraint: relative metric loss <= this
    sampler: str = "tpe"
    pruner: str = "none"
    trials: int = 40
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 3e-3
    float_epochs: int = 30
    seed: int = 0
    limit: dict[str, Any] | None = None
    quantization_config: dict[str, dict[str, int]] | None = None
    tune_filters: str = "none"
    width_multipliers: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 2.0])
    tune_filters_exceptions: str | None = None
    sparsity: list[float] | None = None
    learning_rates: list[float] | None = None
    reference: str = "int8"  # energy reference: int8 weights, int32 accumulators (the paper)
    source_quantizer: str = "int8"
    warm_start: list[str] = field(default_factory=list)  # earlier run folders to seed from
    blocks: list[str] | None = None  # block-wise search: layer-name regexes, one per block
    schedule_block: str = "sequential"  # or "cost": most expensive block first
    device: str = "cpu"
    strategy: str = "optuna"  # optuna | hessian (ILP configs, fine-tuned) | gradient (HGQ)
    prior: str = "none"  # hessian: enqueue the ILP configurations first
    prior_configs: int = 12  # number of ILP budgets swept (at most MAX_PRIOR_CONFIGS)
    beta0: float = 1e-6  # gradient strategy: EBOPs penalty ramp
    beta1: float = 1e-3
    bits_lr: float | None = None
    ebops_target: list[float] | None = None  # gradient: (knee, end) for the beta controller
    gradient_runs: int = 1  # gradient: independent runs in parallel processes, fronts merged
    time_budget: float | None = None  # gradient: seconds per run (None: --epochs decides)
    polish_epochs: int = 10  # gradient: fine-tune each front point at frozen bits (0: off)
    gradient_compile: bool = False  # gradient: torch.compile the training step
    stop_below: float | None = None  # gradient: end a run once val accuracy stays below this
    input_quantile: float = 0.99  # gradient: inputs' integer bits cover this quantile of |x|
    act_quantile: float | None = 0.99  # gradient: same for neurons, per epoch (None: maxima)
    learn_integer: bool = True  # gradient: neurons' integer bits trained (from act_quantile)
    teacher_widths: list[int] | None = None  # gradient: distil from a float model this wide
    distill: float = 1.0  # gradient: weight of the teacher's probabilities in the targets
    granularity: str = "weight"  # gradient: what shares a weight bit-width: weight|channel|layer
    activation_granularity: str = "neuron"  # gradient: inputs/activations: neuron | layer
    population: int = 1  # trials trained together as one batched population

    def __post_init__(self):
        for f in fields(self):  # e.g. epochs='3' from Python, or lr: 3e-3 (a string to YAML)
            problem = _type_problem(str(f.type), getattr(self, f.name))
            if problem and getattr(self, f.name) is None and f.default is not MISSING:
                problem = f"{problem[:-1]}; the default is {f.default!r})"
            if problem:
                raise ValueError(f"search {f.name}={getattr(self, f.name)!r}; expected {problem}")
        checks = {"objective": OBJECTIVES, "goal": GOALS, "sampler": SAMPLERS,
                  "pruner": PRUNERS, "strategy": STRATEGIES, "prior": PRIORS,
                  "granularity": GRANULARITIES, "activation_granularity": ACT_GRANULARITIES}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"search {name}={getattr(self, name)!r}; expected one of "
                                 f"{', '.join(allowed)}")
        if str(self.model).strip().lower() == "jet_autoencoder":  # (a shape error, later)
            raise ValueError("search model='jet_autoencoder': an autoencoder (hetq train --task "
                             "anomaly) is not searched; a search scores classifiers (jet_mlp, "
                             "cnn_digits)")
        name = self.study_name
        if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"search study_name={name!r}; expected a name such as 'jets1', "
                             "not empty and without '/' or '\\' (it also names the folder of "
                             "the trials' checkpoints, RUN/trials/NAME)")
        if self.ebops_target is not None:
            t = list(self.ebops_target)
            if len(t) != 2 or not (0 < float(t[1]) <= float(t[0])):
                raise ValueError(f"search ebops_target={self.ebops_target!r}; expected "
                                 "[knee, end] with 0 < end <= knee")
            if not 1e-9 <= float(self.beta0) <= 1.0:  # BetaController's range
                raise ValueError(f"search beta0={self.beta0!r}; with ebops_target it is the "
                                 "controller's first beta, expected in [1e-9, 1]")
        # (with ebops_target the controller steers beta, and beta1 is not used)
        if not 0 < float(self.beta0) <= (float(self.beta1) if self.ebops_target is None
                                         else 1.0) or not float(self.beta1) < math.inf:
            raise ValueError(f"search beta0={self.beta0!r}, beta1={self.beta1!r}; expected "
                             "0 < beta0 <= beta1 (the EBOPs penalty's ramp, e.g. 1e-6 to 1e-3)")
        if self.time_budget is not None and not float(self.time_budget) > 0:
            raise ValueError(f"search time_budget must be > 0 seconds, got {self.time_budget!r}")
        if self.objective == "pareto" and self.pruner != "none":  # (it failed after the float
            raise ValueError(f"search pruner={self.pruner!r}: pruners work with "  # training)
                             "single-objective searches only (Optuna); use the objective "
                             "'forgiving', or the pruner 'none'")
        for name in ("trials", "epochs", "batch_size", "float_epochs", "prior_configs",
                     "population", "gradient_runs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"search {name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.prior_configs) > MAX_PRIOR_CONFIGS:  # (1e6 budgets: ~14 h of ILPs)
            raise ValueError(f"search prior_configs={self.prior_configs!r}; at most "
                             f"{MAX_PRIOR_CONFIGS} ILP budgets (each is one integer program, "
                             "~0.05 s on the jet MLP; a sweep finds fewer distinct "
                             "configurations than budgets anyway)")
        for name in ("lr", "bits_lr"):
            v = getattr(self, name)
            if v is not None and not float(v) > 0:
                raise ValueError(f"search {name} must be > 0, got {v!r}")
        if self.stop_below is not None and not (0.0 <= float(self.stop_below) <= 1.0):
            raise ValueError(f"search stop_below={self.stop_below!r}; expected an accuracy "
                             "between 0 and 1")
        for name in ("input_quantile", "act_quantile"):
            v = getattr(self, name)
            if (v is not None or name == "input_quantile") and not (
                    isinstance(v, (int, float)) and 0.0 < float(v) <= 1.0):
                raise ValueError(f"search {name}={v!r}; expected a fraction in (0, 1]"
                                 + (" or null (the largest value seen)"
                                    if name == "act_quantile" else ""))
        if self.teacher_widths is not None and (
                not isinstance(self.teacher_widths, (list, tuple)) or not self.teacher_widths
                or not all(isinstance(w, int) and w >= 1 for w in self.teacher_widths)):
            raise ValueError(f"search teacher_widths={self.teacher_widths!r}; expected a list "
                             "of positive hidden-layer widths, e.g. [64, 32, 32]")
        if not (isinstance(self.distill, (int, float)) and 0.0 < float(self.distill) <= 1.0):
            raise ValueError(f"search distill={self.distill!r}; expected a weight in (0, 1]")
        if int(self.polish_epochs) < 0:
            raise ValueError(f"search polish_epochs must be >= 0 (0: off), got "
                             f"{self.polish_epochs!r}")
        if not float(self.rate) > 1.0:
            raise ValueError(f"search rate={self.rate!r}; expected a cost ratio > 1 (the "
                             "forgiving factor's step, e.g. 2)")
        if not float(self.stress) > 0.0:
            raise ValueError(f"search stress={self.stress!r}; expected a factor > 0")
        from ..cost.qtypes import qtype_of

        for name in ("source_quantizer", "reference"):  # costed after the float training
            try:
                qtype_of(getattr(self, name))
            except (ValueError, TypeError) as e:
                raise ValueError(f"search {name}={getattr(self, name)!r}: {e}") from None
        for name in ("delta_p", "delta_n"):  # percentages of metric per `rate`-fold cost
            if not 0.0 <= float(getattr(self, name)) < math.inf:
                raise ValueError(f"search {name}={getattr(self, name)!r}; expected a "
                                 "percentage >= 0 (e.g. 8)")
        if self.min_reduction is not None and not 0.0 < float(self.min_reduction) < math.inf:
            raise ValueError(f"search min_reduction={self.min_reduction!r}; expected a cost "
                             "reduction factor > 0 (e.g. 4 for 4x cheaper than the reference)")
        if self.max_metric_loss is not None and not 0.0 <= float(self.max_metric_loss) <= 1.0:
            raise ValueError(f"search max_metric_loss={self.max_metric_loss!r}; expected a "
                             "fraction of the reference's metric in [0, 1] (e.g. 0.05 = 5 %)")
        for name, example in (("limit", "{Linear: [4, 4], ReLU: [4]}"),
                              ("quantization_config", "{kernel: {'quantized_bits(4,0,1)': 4}}")):
            v = getattr(self, name)
            if v is not None and not isinstance(v, dict):
                raise ValueError(f"search {name}: expected a mapping such as {example}; got a "
                                 f"{type(v).__name__}")
        # (the grid sampler stops the study from inside a trial's run, which a population's
        # batched tell() is not)
        if self.population > 1 and self.sampler == "grid":
            raise ValueError("search sampler 'grid' tries each combination once, one trial "
                             f"at a time; it does not take population={self.population} "
                             "(--population)")
        if self.blocks:  # (each block runs a study of its own, trial by trial)
            extra = [opt for opt, on in (("--warm-start", bool(self.warm_start)),
                                         ("--prior hessian", self.prior == "hessian"),
                                         (f"--strategy {self.strategy}",
                                          self.strategy in ("hessian", "gradient")),
                                         ("--population", self.population > 1)) if on]
            if extra:
                raise ValueError(f"search blocks: a block-wise search runs one study per "
                                 f"block, one trial at a time; it does not take "
                                 f"{', '.join(extra)}")
        regexes = [("blocks", b) for b in self.blocks or []]
        if self.tune_filters_exceptions is not None:
            regexes.append(("tune_filters_exceptions", self.tune_filters_exceptions))
        for name, pattern in regexes:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(f"search {name}: {pattern!r} is not a layer-name regular "
                                 f"expression ({e})") from None
        lists = {"sparsity": ("a pruned fraction in [0, 1)", lambda v: 0.0 <= v < 1.0),
                 "learning_rates": ("a finite learning rate > 0",
                                    lambda v: 0.0 < v < math.inf),
                 "width_multipliers": ("a finite width multiplier > 0",
                                       lambda v: 0.0 < v < math.inf)}
        for name, (what, ok) in lists.items():
            vals = getattr(self, name)
            if vals is None:
                continue
            bad = [v for v in vals if not (isinstance(v, (int, float)) and ok(float(v)))]
            if bad or (name == "width_multipliers" and not vals):
                raise ValueError(f"search {name}={vals!r}: each must be {what}"
                                 + (f"; got {bad[0]!r}" if bad else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown search settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Written whole or not at all (a new file moved over the old one): a kill during
        the rewrite of a resumed search left an empty search.yaml, read as all defaults."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        write_whole(path, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> SearchConfig:
        try:
            d = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not readable YAML ({str(e).splitlines()[0]}); "
                             "delete it and rerun the search's command (its study keeps "
                             "its own copy of the settings and checks them)") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} holds no search settings (it is empty or not a "
                             "mapping); delete it and rerun the search's command (its study "
                             "keeps its own copy of the settings and checks them)")
        return cls.from_dict(d)


def _named_settings(init):
    """SearchConfig's generated __init__, with a setting it does not know named (and the
    near ones listed) rather than Python's bare 'unexpected keyword argument'."""
    import difflib
    import functools

    @functools.wraps(init)
    def __init__(self, *args, **kw):
        known = [f.name for f in fields(SearchConfig)]
        unknown = sorted(set(kw) - set(known))
        if unknown:
            near = {u: difflib.get_close_matches(u, known, n=2) for u in unknown}
            hint = "; ".join(f"{u!r}: did you mean {' or '.join(map(repr, m))}?"
                             for u, m in near.items() if m)
            raise ValueError(f"unknown search setting(s) {unknown}" + (f" ({hint})" if hint
                                                                       else "")
                             + f"; known: {', '.join(known)}")
        init(self, *args, **kw)

    return __init__


SearchConfig.__init__ = _named_settings(SearchConfig.__init__)
