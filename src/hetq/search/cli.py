"""`hetq search`, `hetq worker`, `hetq report`, `hetq retrain`."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

from ..cli import (
    check_output,
    describe,
    interrupts_save,
    name_type,
    positive_float,
    positive_int,
    seed_int,
    sh,
)
from .config import ACT_GRANULARITIES, GRANULARITIES, SearchConfig


def _load_yaml(path: str | None):
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {path}")
    from ..quant.convert import parse_yaml

    try:
        d = parse_yaml(p.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if not d:  # (it was taken as no file at all: every layer searched with every candidate)
        raise ValueError(f"{path} is empty; give layer entries, or leave the option out")
    return d


def _quantile(text: str) -> float | None:
    """A fraction in (0, 1], or 'max' (None: the largest value seen)."""
    if text.strip().lower() == "max":
        return None
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1] or 'max', got {text!r}")
    return v


def _input_quantile(text: str) -> float:
    """As `_quantile`, 'max' being the quantile 1.0 (input ranges are always quantiles)."""
    v = _quantile(text)
    return 1.0 if v is None else v


STORAGE_HELP = "the search's database URL, if it used --storage (default: its journal file)"


# options that only one kind of strategy reads (argparse dests): given with the other kind,
# they are reported as ignored rather than silently dropped
STRATEGY_ONLY = {
    "gradient": ("beta0", "beta1", "bits_lr", "ebops_target", "runs", "time_budget",
                 "compile", "stop_below", "input_quantile", "act_quantile", "learn_integer",
                 "teacher_widths", "distill", "polish_epochs", "granularity",
                 "activation_granularity"),
    "optuna/hessian": ("goal", "objective", "metric", "delta_p", "delta_n", "rate", "stress",
                       "min_reduction", "max_loss", "sampler", "pruner", "trials", "limit",
                       "quantization_config", "tune_filters", "width_multipliers",
                       "tune_filters_exceptions", "sparsity", "learning_rates", "warm_start",
                       "storage", "workers", "blocks", "schedule_block", "device", "devices",
                       "prior", "prior_configs", "population", "deployable", "reference"),
}


# the gradient strategy's epochs with --time-budget and no --epochs: the clock ends training
GRADIENT_EPOCH_CAP = 1_000_000


def ignored_options(a: argparse.Namespace) -> list[str]:
    """The options given (not at their defaults) that `a.strategy` does not read."""
    other = "optuna/hessian" if a.strategy == "gradient" else "gradient"
    return ["--" + k.replace("_", "-") for k in STRATEGY_ONLY[other]
            if getattr(a, k) != a.strategy_defaults[k]]


def _began_with(out: str, qc: dict) -> bool:
    """Whether the search in `out` began with the candidates `qc` as they are (a run from
    before --deployable filled in a file's missing activation maps resumes as it began)."""
    path = Path(out) / "search.yaml"
    try:
        return path.exists() and SearchConfig.load(path).quantization_config == qc
    except (ValueError, OSError):  # (a damaged file: the search's own check says so)
        return False


def unused_options(a: argparse.Namespace, deployable_filled: bool = False) -> list[str]:
    """Options given that this search's other settings make unused (each with why);
    `deployable_filled`: --deployable set candidates that --quantization-config did not."""
    d = a.strategy_defaults
    if a.strategy == "gradient":  # (the other strategies' options: ignored_options)
        return [why for why, on in (
            ("--distill (it needs --teacher-widths)",
             a.distill != d["distill"] and not a.teacher_widths),
            ("--beta1 (--ebops-target steers beta instead of the ramp)",
             a.beta1 != d["beta1"] and a.ebops_target)) if on]
    given = {k for k in d if getattr(a, k) != d[k]}
    out = []
    for names, needs in (
            (("width_multipliers", "tune_filters_exceptions"),
             a.tune_filters in (None, "none") and "--tune-filters"),
            (("schedule_block",), not a.blocks and "--blocks"),
            (("prior_configs",), a.strategy != "hessian" and a.prior != "hessian"
             and "--strategy hessian or --prior hessian"),
            (("devices",), a.workers <= 1 and "--workers N"),
            (("delta_p", "delta_n", "rate", "stress"), a.objective == "pareto"
             and "--objective forgiving")):
        if needs:
            out += [f"--{k.replace('_', '-')} (it needs {needs})" for k in names if k in given]
    if a.deployable and a.quantization_config is not None and \
            not deployable_filled:  # (dropped without a word)
        out.append("--deployable (--quantization-config gives the activation candidates)")
    return out


# SearchConfig fields set from an option of another name (the rest: --field-name)
FIELD_OPTIONS = {"max_metric_loss": "--max-loss", "source_quantizer": "--source",
                 "gradient_runs": "--runs", "study_name": "--study", "gradient_compile":
                 "--compile", "model_kwargs": "--model-widths"}


def _without(cfg: SearchConfig, options: list[str]) -> SearchConfig:
    """`cfg` with the fields of `options` (e.g. --delta-p, --runs) at their defaults."""
    import dataclasses

    default = SearchConfig()
    by_option = {option_name(f.name): f.name for f in dataclasses.fields(SearchConfig)}
    reset = {by_option[o]: getattr(default, by_option[o]) for o in options if o in by_option}
    return dataclasses.replace(cfg, **reset) if reset else cfg


def option_name(field: str) -> str:
    return FIELD_OPTIONS.get(field, "--" + field.replace("_", "-"))


def option_value(v) -> str:
    """A setting's value as its option is typed: --model-widths 8 4, --sparsity 0 0.5."""
    if isinstance(v, dict) and set(v) <= {"widths"}:  # (--model-widths; none: the default)
        v = v.get("widths", "(default)")
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v):
        return " ".join(str(x) for x in v) if v else "(none)"
    return "(none)" if v is None else str(v)


@contextlib.contextmanager
def option_names():
    """SearchConfig's errors ("search max_metric_loss=5.0; expected ...") as the command
    line's ("--max-loss 5.0; expected ...")."""
    from .driver import OtherSettings

    try:
        yield
    except OtherSettings as e:  # each setting named by its option, with the values
        raise ValueError(e.render(option_name, option_value)) from None
    except ValueError as e:
        from dataclasses import fields

        names = {f.name for f in fields(SearchConfig)}  # (not "search space: ...": --space)
        msg = re.sub(r"^search (\w+)([=: ])",
                     lambda m: option_name(m[1]) + (" " if m[2] == "=" else m[2])
                     if m[1] in names else m[0], str(e))
        msg = re.sub(r"^quantization_config key", "--quantization-config key", msg)
        raise ValueError(msg) from None


def _devices(text: str) -> list[str]:
    """`--devices` ids, each a CUDA device this machine has."""
    import torch

    ids = [d.strip() for d in text.split(",")]
    if not all(d.isdigit() for d in ids):
        raise ValueError(f"--devices {text!r}: expected comma-separated CUDA device ids, "
                         "e.g. 0,1,2,3")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [d for d in ids if int(d) >= n]
    if missing:
        raise ValueError(f"--devices {text!r}: this machine has {n} CUDA device(s) (ids 0 to "
                         f"{n - 1}); no device {', '.join(missing)}" if n else
                         f"--devices {text!r}: CUDA is not available on this machine")
    return ids


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("search", help="search per-layer quantizers (Optuna study)",
                       **describe("Search per-layer quantizers and widths; prints the "
                                  "Pareto table. Rerun the same command to resume.",
                                  "hetq search --goal energy --trials 40 --epochs 10 "
                                  "--out runs/s1"))
    s.add_argument("--model", type=name_type, default="jet_mlp",
                   help="zoo model to quantize, trained in float first (default %(default)s)")
    s.add_argument("--model-widths", type=positive_int, nargs="+", default=None, metavar="N",
                   help="hidden layer widths of --model (jet_mlp default: 64 32 32); e.g. "
                        "32 16 for a smaller start of --strategy gradient")
    s.add_argument("--data", default=None,
                   help="jets-sim | jets-sim:PATH | jets | jets:PATH | digits | synthetic (default "
                        "jets-sim, the built-in simulated jets sample; digits for --model "
                        "cnn_digits)")
    s.add_argument("--out", default="runs/search", help="run folder (journal, checkpoints)")
    s.add_argument("--goal", default="energy", choices=["energy", "bits", "ebops", "lut"],
                   help="the cost searched against: QTools energy (pJ), model size in "
                        "bits, EBOPs, or the FPGA LUT estimate (default %(default)s)")
    s.add_argument("--objective", default="forgiving", choices=["forgiving", "pareto"],
                   help="forgiving factor score (one value) or a (metric, cost) Pareto front")
    s.add_argument("--metric", default="accuracy",
                   help="validation metric to keep high: accuracy, auc_CLASS, auc_mean, "
                        "tpr@fpr=0.01_CLASS or tpr@fpr=0.01_mean (CLASS: a class name of "
                        "--data, e.g. t; default %(default)s)")
    s.add_argument("--delta-p", type=float, default=8.0,
                   help="forgiving factor: %% of the metric traded for every --rate-fold "
                        "cost saving (default %(default)s)")
    s.add_argument("--delta-n", type=float, default=8.0,
                   help="forgiving factor: %% of the metric charged for every --rate-fold "
                        "cost growth over the reference (default %(default)s)")
    s.add_argument("--rate", type=float, default=2.0,
                   help="forgiving factor: the cost ratio per step, > 1 (default %(default)s)")
    s.add_argument("--stress", type=float, default=1.0,
                   help="forgiving factor: the reference cost is scaled by this; < 1 "
                        "pushes towards smaller models (default %(default)s)")
    s.add_argument("--min-reduction", type=float, default=None,
                   help="hard constraint: reference cost / trial cost >= X")
    s.add_argument("--max-loss", type=float, default=None,
                   help="hard constraint: relative metric loss <= X (0.05 = 5%%)")
    s.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid", "gp", "nsga2"],
                   help="Optuna sampler; nsga2's generations are a fifth of --trials, 4 to "
                        "50 (default %(default)s)")
    s.add_argument("--pruner", default="none", choices=["none", "median", "asha", "hyperband"],
                   help="stop unpromising trials early, on their per-epoch validation "
                        "metric (default %(default)s)")
    s.add_argument("--trials", type=positive_int, default=None,
                   help="trial budget (default 40; with --strategy hessian: --prior-configs)")
    s.add_argument("--epochs", type=positive_int, default=None,
                   help="QAT epochs per trial (default 10); gradient strategy: the cap on "
                        "training epochs per run (default 10, and none with --time-budget)")
    s.add_argument("--float-epochs", type=positive_int, default=30,
                   help="epochs of the float model every trial starts from (default "
                        "%(default)s)")
    s.add_argument("--batch-size", type=positive_int, default=1024, help="default %(default)s")
    s.add_argument("--lr", type=float, default=3e-3,
                   help="Adam learning rate of the float model and the trials (default "
                        "%(default)s)")
    s.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the sampler and the training (default %(default)s)")
    s.add_argument("--limit", help="YAML file mapping layer names, name regexes or layer "
                        "types to the most bits searched, [kernel, bias, activation] for weight "
                        "layers and [activation] for activations, e.g. 'fc.*: [8, 8, 8]' and "
                        "'ReLU: [4]' (AutoQKeras' limit: layers no key matches stay float, "
                        "and the layers of one regex share one choice; see hetq.search.space)")
    s.add_argument("--quantization-config", help="YAML file with candidate quantizer maps")
    s.add_argument("--tune-filters", default="none", choices=["none", "layer", "block"],
                   help="also search widths: one multiplier per layer, or one shared by all "
                        "layers (AutoQKeras' 'block'); with --blocks, the first block that "
                        "holds a layer searches it")
    s.add_argument("--width-multipliers", type=float, nargs="+", default=None,
                   help="width choices (default 0.5 0.75 1 1.5 2)")
    s.add_argument("--tune-filters-exceptions", default=None,
                   help="regex of layers whose width stays (the output layer always does)")
    s.add_argument("--sparsity", type=float, nargs="+", default=None,
                   help="searchable pruning fractions, e.g. 0 0.25 0.5")
    s.add_argument("--learning-rates", type=float, nargs="+", default=None,
                   help="searchable learning rates of the trials, e.g. 1e-3 3e-3 "
                        "(default: --lr only)")
    s.add_argument("--warm-start", nargs="*", default=[], metavar="RUN",
                   help="earlier run folders whose Pareto fronts (up to 5 configurations each) "
                        "become the first trials; their studies are read from their journal, else "
                        "from --storage")
    s.add_argument("--storage", default=None,
                   help="postgresql://user@host/db for many machines (default: journal file "
                        "in --out)")
    s.add_argument("--study", default="hetq", help="study name")
    s.add_argument("--workers", type=positive_int, default=1, help="local worker processes")
    s.add_argument("--blocks", nargs="+", default=None, metavar="REGEX",
                   help="block-wise search: one layer-name regex per block (a layer no "
                        "block matches stays float)")
    s.add_argument("--schedule-block", default="sequential", choices=["sequential", "cost"],
                   help="with --blocks: search the blocks in the given order, or the most "
                        "expensive first (default %(default)s)")
    s.add_argument("--device", default="cpu",
                   help="cpu | cuda | cuda:N | mps | auto (default %(default)s)")
    s.add_argument("--devices", default=None,
                   help="with --workers: comma-separated CUDA device ids, one worker per GPU "
                        "round-robin (e.g. 0,1,2,3)")
    s.add_argument("--strategy", default="optuna", choices=["optuna", "hessian", "gradient"],
                   help="optuna: sampler over the space; hessian: Hessian-trace ILP "
                        "configurations fine-tuned with QAT; gradient: trainable bit-widths "
                        "(one training, a Pareto front of checkpoints)")
    s.add_argument("--prior", default="none", choices=["none", "hessian"],
                   help="hessian: enqueue the ILP configurations before sampling")
    s.add_argument("--prior-configs", type=positive_int, default=12,
                   help="ILP budgets swept for the Hessian prior/strategy")
    s.add_argument("--beta0", type=float, default=1e-6,
                   help="gradient strategy: EBOPs penalty at the start (ramped to --beta1)")
    s.add_argument("--beta1", type=float, default=1e-3,
                   help="gradient strategy: EBOPs penalty at the end of the ramp "
                        "(default %(default)s)")
    s.add_argument("--bits-lr", type=float, default=None,
                   help="gradient strategy: Adam learning rate of the bit-widths (default: "
                        "--lr); with --time-budget, --lr 3e-3 --bits-lr 1e-2 lets the bits "
                        "move fast while the weights stay calm")
    s.add_argument("--ebops-target", type=float, nargs=2, metavar=("KNEE", "END"),
                   help="gradient strategy: a controller steers beta so that EBOPs fall "
                        "log-linearly to KNEE in the first 30%% of training, then to END "
                        "(instead of the --beta0..--beta1 ramp)")
    s.add_argument("--runs", type=positive_int, default=1,
                   help="gradient strategy: independent runs (seeds seed, seed+1, ...) in "
                        "parallel processes, their fronts merged")
    s.add_argument("--time-budget", type=float, default=None,
                   help="gradient strategy: seconds of training per run (--epochs, if given, "
                        "caps it)")
    s.add_argument("--compile", action="store_true",
                   help="gradient strategy: torch.compile the training step (1.2x the steps "
                        "per second of the jet MLP, 1.5x of a 16-32-16-5 one, after ~30 s of "
                        "compiling; worth it from a few "
                        "hundred epochs; needs a C++ compiler, falls back with a warning)")
    s.add_argument("--stop-below", type=float, default=None, metavar="ACC",
                   help="gradient strategy: a run stops once half of its training is done "
                        "and its validation accuracy was below ACC in each of its last 5 "
                        "epochs")
    s.add_argument("--input-quantile", type=_input_quantile, default=SearchConfig.input_quantile,
                   metavar="Q", help="gradient strategy: each input feature's integer bits "
                   "cover this quantile of |x| on the training data, larger values saturate "
                   "(default %(default)s; 'max': the largest)")
    s.add_argument("--act-quantile", type=_quantile, default=SearchConfig.act_quantile,
                   metavar="Q", help="gradient strategy: each hidden neuron's integer bits "
                   "cover this quantile of its outputs, larger values saturate: the start "
                   "with --learn-integer, else recomputed every epoch (default %(default)s; "
                   "'max': the largest, as HGQ1)")
    s.add_argument("--learn-integer", action=argparse.BooleanOptionalAction,
                   default=SearchConfig.learn_integer,
                   help="gradient strategy: train each hidden neuron's integer bits too, "
                        "starting from the --act-quantile range: values above it saturate "
                        "and pull it up, the EBOPs term pulls it down")
    s.add_argument("--teacher-widths", type=positive_int, nargs="+", default=None,
                   metavar="N",
                   help="gradient strategy: train a float --model with these hidden widths "
                        "too (saved as teacher.pt in --out) and train the bit-widths on its "
                        "predicted probabilities (knowledge distillation), e.g. 64 32 32 "
                        "with --model-widths 32 16")
    s.add_argument("--distill", type=float, default=SearchConfig.distill, metavar="W",
                   help="gradient strategy, with --teacher-widths: the targets are "
                        "W x the teacher's probabilities + (1 - W) x the labels "
                        "(default %(default)s)")
    s.add_argument("--granularity", choices=GRANULARITIES,
                   default=SearchConfig.granularity,
                   help="gradient strategy: what shares one trainable weight bit-width: each "
                        "weight, the weights into a neuron (channel), or a layer's weights "
                        "(default %(default)s)")
    s.add_argument("--activation-granularity", choices=ACT_GRANULARITIES,
                   default=SearchConfig.activation_granularity,
                   help="gradient strategy: each input feature and neuron has its own type "
                        "(neuron), or the inputs share one and each activation layer one "
                        "(layer: one fixed-point type per tensor, which hls4ml needs; default "
                        "%(default)s)")
    s.add_argument("--polish-epochs", type=int, default=10,
                   help="gradient strategy: after training, fine-tune each front point's "
                        "weights at its frozen bits for this many epochs (0: off)")
    s.add_argument("--population", type=positive_int, default=1,
                   help="train trials in batches of K as one batched population (faster for "
                        "tiny models; single local worker)")
    s.add_argument("--source", default=SearchConfig.source_quantizer, metavar="TYPE",
                   help="type of the model's inputs in the costs: int8, fp32 or a quantizer, "
                        "e.g. 'quantized_bits(16,5,alpha=1)' for ap_fixed<16,6> inputs "
                        "(default %(default)s, as `hetq cost --source`)")
    s.add_argument("--reference", default=SearchConfig.reference, metavar="TYPE",
                   help="the float model's reference cost (the forgiving factor's baseline): "
                        "every weight of this type, e.g. int8 or int16 (default %(default)s)")
    s.add_argument("--deployable", action="store_true",
                   help="search only activations the hls4ml export runs bit-exactly "
                        "(quantized_relu/quantized_bits), except where a "
                        "--quantization-config file gives activation candidates")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bars, and no per-trial or setup lines: the final table "
                        "only")
    s.set_defaults(func=_search, strategy_defaults={
        k: s.get_default(k) for names in STRATEGY_ONLY.values() for k in names})

    w = sub.add_parser("worker", help="join a running search from this machine",
                       **describe("Run trials of a search started elsewhere with `hetq search "
                                  "--storage URL --study NAME`; the settings come from the study."
                                  " Completed trials stay in the study when a worker stops or "
                                  "dies.",
                                  "hetq worker --storage postgresql://user@db-host/hetq "
                                  "--study jets1"))
    w.add_argument("--study", default=None,
                   help="name of the study to join (hetq search --study; default: the one "
                        "--out's search.yaml names, else the only one in --storage)")
    w.add_argument("--storage", default=None, help=STORAGE_HELP)
    w.add_argument("--out", default=None,
                   help="run folder: the journal (without --storage) and this machine's trial "
                        "checkpoints (default runs/STUDY)")
    w.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress bars, and no per-trial lines")
    w.set_defaults(func=_worker)

    r = sub.add_parser("report", help="re-print a search's Pareto table, write an HTML report",
                       **describe("Re-print the Pareto table of a search run folder and write "
                                  "RUN/report.html.",
                                  "hetq report runs/search"))
    r.add_argument("run", help="search run folder")
    r.add_argument("--storage", default=None, help=STORAGE_HELP)
    r.add_argument("--no-html", action="store_true",
                   help="print the table only, without writing RUN/report.html")
    r.set_defaults(func=_report)

    t = sub.add_parser("retrain", help="fine-tune a chosen trial's model",
                       **describe("Fine-tune one trial of a search for longer, from its trained "
                                  "weights with its quantizers and widths, and save the "
                                  "checkpoint.",
                                  "hetq retrain runs/search --trial 12 --epochs 100"))
    t.add_argument("run", help="search run folder")
    t.add_argument("--trial", required=True,
                   help="trial number (as in the table), or 'best' (a single-objective search)")
    t.add_argument("--epochs", type=positive_int, default=100,
                   help="fine-tuning epochs; the epoch with the best validation loss is "
                        "kept (default %(default)s)")
    t.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default: the search's --lr / 3)")
    t.add_argument("--out", default=None,
                   help="checkpoint path (default RUN/retrain_NNNNN.pt); an existing one is "
                        "refused before training")
    t.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    t.add_argument("--storage", default=None, help=STORAGE_HELP)
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=_retrain)


def _search(a) -> int:
    from ..models import widths_kwargs
    from .driver import run_search
    from .results import format_table, pareto_rows
    from .space import DEPLOYABLE_QUANTIZATION_CONFIG
    from .storage import redact

    # a folder that cannot be written, in train's words and exit status (it was 'Read-only
    # file system: X', exit 1)
    check_output(a.out, "--out", folder=True)
    if a.data is None:
        from ..models import default_data

        a.data = default_data(a.model)
    qc = qc_file = _load_yaml(a.quantization_config)
    if a.deployable:  # (a file without activation maps: the default ones were searched,
        # binary and po2 activations among them)
        if qc is None:
            qc = DEPLOYABLE_QUANTIZATION_CONFIG
        elif isinstance(qc, dict) and not {"activation", "linear"} <= set(qc) and \
                not _began_with(a.out, qc):  # (not a dict: refused by SearchConfig)
            qc = {**{k: v for k, v in DEPLOYABLE_QUANTIZATION_CONFIG.items()
                     if k in ("activation", "linear")}, **qc}
    with option_names():  # its errors name the options typed, not SearchConfig's fields
        cfg = SearchConfig(
            model=a.model, data=a.data,
            model_kwargs=widths_kwargs(a.model, a.model_widths),
            study_name=a.study, objective=a.objective, goal=a.goal,
            metric=a.metric, delta_p=a.delta_p, delta_n=a.delta_n, rate=a.rate, stress=a.stress,
            min_reduction=a.min_reduction, max_metric_loss=a.max_loss, sampler=a.sampler,
            pruner=a.pruner,
            trials=a.trials or (a.prior_configs if a.strategy == "hessian" else 40),
            # (--time-budget 600 alone trained 10 epochs, the default cap, in seconds)
            epochs=a.epochs if a.epochs is not None else
            GRADIENT_EPOCH_CAP if a.strategy == "gradient" and a.time_budget else 10,
            batch_size=a.batch_size, lr=a.lr,
            float_epochs=a.float_epochs, seed=a.seed, limit=_load_yaml(a.limit),
            quantization_config=qc, tune_filters=a.tune_filters,
            **({"width_multipliers": a.width_multipliers} if a.width_multipliers else {}),
            tune_filters_exceptions=a.tune_filters_exceptions, sparsity=a.sparsity,
            learning_rates=a.learning_rates, warm_start=list(a.warm_start), device=a.device,
            blocks=a.blocks or None, schedule_block=a.schedule_block, strategy=a.strategy,
            prior=a.prior, prior_configs=a.prior_configs, beta0=a.beta0, beta1=a.beta1,
            bits_lr=a.bits_lr, population=a.population, ebops_target=a.ebops_target,
            gradient_runs=a.runs, time_budget=a.time_budget, polish_epochs=a.polish_epochs,
            gradient_compile=a.compile, stop_below=a.stop_below,
            input_quantile=a.input_quantile, act_quantile=a.act_quantile,
            learn_integer=a.learn_integer, teacher_widths=a.teacher_widths, distill=a.distill,
            granularity=a.granularity, activation_granularity=a.activation_granularity,
            source_quantizer=a.source, reference=a.reference,
        )
    ignored = ignored_options(a)
    if ignored:
        print(f"note: --strategy {a.strategy} does not use {', '.join(ignored)}"
              + (" (--runs gives parallel runs)" if "--workers" in ignored else ""),
              file=sys.stderr)
    unused = unused_options(a, deployable_filled=qc is not qc_file)
    if unused:
        print(f"note: not used: {'; '.join(unused)}", file=sys.stderr)
    # and not recorded as the run's settings either: a rerun without them (the same search)
    # was refused as one with "other settings"
    cfg = _without(cfg, [o.split()[0] for o in ignored + unused])
    if a.strategy == "gradient":
        from .gradient import format_gradient_table, run_gradient_strategy

        try:
            with option_names():
                rows = run_gradient_strategy(cfg, a.out, progress=not a.no_progress)
        except KeyboardInterrupt:  # (training itself saves its front and returns)
            out = Path(a.out)
            print("search stopped while it trained its float model: nothing is kept yet; "
                  "rerun the same command to start it" if not (out / "float.pt").exists() else
                  f"search stopped while it trained its float teacher: the float model is kept "
                  f"in {out / 'float.pt'}; rerun the same command to go on"
                  if cfg.teacher_widths and not (out / "teacher.pt").exists() else
                  f"search stopped before its training began: the float model is kept in "
                  f"{out / 'float.pt'}; rerun the same command to go on",
                  file=sys.stderr, flush=True)
            raise
        if a.no_progress:  # with progress on, the strategy prints the table itself
            print(format_gradient_table(rows))
        return 0
    devices = _devices(a.devices) if a.devices is not None else None
    # SIGTERM (kill, a batch system's time limit) stops it as Ctrl-C does: the worker processes
    # it started end too (they used to run on, orphaned); finished trials are in the study
    with interrupts_save():
        try:
            with option_names():
                study = run_search(cfg, a.out, storage=a.storage, workers=a.workers,
                                   progress=not a.no_progress, devices=devices)
        except KeyboardInterrupt:
            if not (Path(a.out) / "float.pt").exists():  # (no trial has run yet)
                print("search stopped while it trained its float model: nothing is kept yet; "
                      "rerun the same command to start it", file=sys.stderr, flush=True)
                raise
            print(f"search stopped: its finished trials are kept in "
                  f"{a.storage and redact(a.storage) or a.out}; rerun the same command to "
                  "resume it", file=sys.stderr, flush=True)
            raise
    print()
    print(format_table(pareto_rows(a.out, a.storage), cfg, study.user_attrs.get("reference")))
    return 0


def _worker(a) -> int:
    from .driver import default_study, run_worker_process

    if a.out:
        check_output(a.out, "--out", folder=True)
    study = a.study or default_study(a.out, a.storage)
    with option_names():
        run_worker_process(a.out, study, a.storage, progress=not a.no_progress)
    return 0


def _report(a) -> int:
    from .results import format_table, front_rows, is_gradient_run, load_run
    from .storage import redact

    if is_gradient_run(a.run):
        from .gradient import format_gradient_table, saved_gradient_rows

        if a.storage:
            print(f"note: {a.run} is a gradient-strategy run, whose front is in its folder; "
                  "--storage is not used", file=sys.stderr)
        rows = saved_gradient_rows(a.run)
        print(format_gradient_table(rows))
        if not a.no_html:
            from .report import write_gradient_html_report

            with _no_html_hint():
                path = write_gradient_html_report(a.run, rows)
            print(f"HTML report: {path}")  # (a full stdout is not the report's files)
        return 0
    cfg, study = load_run(a.run, a.storage)  # (read once: a study of 10,000 trials takes s)
    rows = front_rows(cfg, study)
    print(format_table(rows, cfg, study.user_attrs.get("reference")))
    from .storage import resume_advice, retried_numbers, still_running

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    states = ["RETRIED" if t.number in retried else t.state.name for t in trials]
    if "COMPLETE" not in states:  # (its plots would be empty)
        pruned = states.count("PRUNED")
        advice = resume_advice(study)
        # (a killed search's trial stays RUNNING: it was counted as running)
        live = still_running(study)
        gone = states.count("RUNNING") - live
        if pruned >= cfg.trials and not {"RUNNING", "WAITING"} & set(states):
            # (pruned trials count: the rerun advised found the budget spent, and ended)
            advice = (f"the budget of {cfg.trials} trial(s) is spent, by pruned ones "
                      f"(--pruner {cfg.pruner}): a rerun adds none; search again in another "
                      "--out with more --trials or --pruner none")
        print(f"\nno trial of {a.run} has completed yet ({states.count('FAIL')} failed, "
              + (f"{pruned} pruned, " if pruned else "")
              + (f"{states.count('RETRIED')} interrupted and queued again, "
                 if "RETRIED" in states else "")
              + f"{live} running, "
              + (f"{gone} left running by a process that has stopped, " if gone else "")
              + f"{states.count('WAITING')} queued); {advice}. No HTML report was written.")
        return 0
    if not a.no_html:
        from .report import write_html_report

        with _no_html_hint():
            path = write_html_report(a.run, a.storage, loaded=(cfg, study), rows=rows)
        print(f"HTML report: {path}")
        where = redact(a.storage) if a.storage else Path(a.run) / "study.journal"
        print(f"dashboard (pip install optuna-dashboard): optuna-dashboard {sh(where)}")
    return 0


@contextlib.contextmanager
def _no_html_hint():
    """A report file that cannot be written (a read-only run folder) says that --no-html
    prints the table without writing it."""
    from ..cli import path_problem

    try:
        yield
    except OSError as e:
        raise ValueError(f"{path_problem(e)}; --no-html prints the table without writing "
                         "the report's files") from None


def _retrain(a) -> int:
    from .retrain import retrain

    retrain(a.run, a.trial, epochs=a.epochs, lr=a.lr, out=a.out, storage=a.storage,
            progress=not a.no_progress, overwrite=a.overwrite)
    return 0
