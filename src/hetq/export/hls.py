"""hls4ml projects built directly from the integer engine's types.

The hls4ml model graph is assembled from the engine's steps (no converter guessing): every
weight, bias, accumulator, result and activation precision is the engine's `FixedType`, so the
C simulation computes what the engine computes. `compile()` builds the C simulation with plain
g++ and the ap_types headers that hls4ml ships (no vendor tools); the project folder is ready
for synthesis with Vivado/Vitis HLS.

Supported: MLPs — dense layers (incl. folded batch norm) with quantized_bits / quantized_relu
activations (casts) and float ReLU. Other steps raise `ExportError` naming the layer.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import re
import shutil
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from ..quant.fixed import FixedType
from .engine import IntegerModel, check_engine
from .steps import CastStep, ExportError, KeepStep, WeightStep

BACKENDS = ("Vivado", "Vitis")
DEFAULT_PART = "xcvu13p-flga2577-2-e"  # the paper's FPGA family (Virtex UltraScale+)


def _require_hls4ml():
    try:
        import hls4ml  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError("hls4ml export needs the export extra: pip install 'hetq[export]'") \
            from e


def _values(codes: torch.Tensor, ft) -> np.ndarray:
    return (codes.to(torch.float64) * ft.step).numpy()


def hls_name(name: str) -> str:
    """A layer name hls4ml can use: its names become C++ identifiers, so an nn.Sequential's
    "0", "1", ... get a prefix (its project did not compile: `ap_fixed<17,6> 0_accum_t`),
    other characters become "_", and "input" (reserved by hls4ml) is renamed."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not name or name[0].isdigit():
        name = "layer_" + name
    return "input_cast" if name == "input" else name


def layer_list(eng: IntegerModel) -> tuple[list[dict], dict]:
    """(hls4ml layer dicts, per-layer precision config) for the engine's steps."""
    check_engine(eng, "hls4ml export")
    if len(eng.input_shape) != 1:
        raise ExportError(f"hls4ml export supports flat (MLP) inputs; got input shape "
                          f"{eng.input_shape}")
    layers = [{"class_name": "InputLayer", "name": "x_in", "input_shape": list(eng.input_shape)}]
    prec = {"x_in": {"Precision": {"result": str(eng.input_type)}}}
    width = eng.input_shape[0]
    used = set()
    # the last layer's (name, precision keys, type): a cast from it may need it wider
    prev = ("x_in", ("result",), eng.input_type)
    for step in eng.steps:
        name = hls_name(step.name)
        if name in used:
            raise ExportError(f"{step.name}: duplicate layer name in the hls4ml graph")
        used.add(name)
        if isinstance(step, WeightStep) and step.kind == "dense":
            n_out, n_in = step.w_codes.shape
            if n_in != width:
                raise ExportError(f"{step.name}: expects {n_in} inputs, previous layer gives "
                                  f"{width}")
            layer = {"class_name": "Dense", "name": name, "n_in": n_in, "n_out": n_out,
                     "weight_data": _values(step.w_codes, step.w_type).T.copy(),
                     "use_bias": step.b_codes is not None}
            p = {"weight": str(step.w_type), "accum": str(step.out_type),
                 "result": str(step.out_type)}
            if step.b_codes is not None:
                layer["bias_data"] = _values(step.b_codes, step.b_type)
                p["bias"] = str(step.b_type)
            else:
                layer["bias_data"] = np.zeros(n_out)
                p["bias"] = "ap_fixed<2,1>"
            layers.append(layer)
            prec[name] = {"Precision": p, "ReuseFactor": 1, "Strategy": "Latency"}
            width = n_out
            prev = (name, ("accum", "result"), step.out_type)
        elif isinstance(step, CastStep) or (isinstance(step, KeepStep)
                                            and step.kind == "relu"):
            # relu for unsigned types (negative values saturate to 0 either way) and float
            # ReLU; a signed cast is hls4ml's linear activation with a result type
            act = "relu" if (step.kind == "relu" or not step.out_type.signed) else "linear"
            room = _room_to_round(prec, prev, step)
            if room is not None:  # a layer that only widens, between the two
                rname = _unused_name(f"{name}_room", used)
                layers.append({"class_name": "Activation", "name": rname,
                               "activation": "linear", "n_in": width})
                prec[rname] = {"Precision": {"result": str(room)}}
            layers.append({"class_name": "Activation", "name": name, "activation": act,
                           "n_in": width})
            prec[name] = {"Precision": {"result": str(step.out_type)}}
            prev = (name, ("result",), step.out_type)
        elif isinstance(step, KeepStep) and step.kind in ("identity", "dropout", "flatten"):
            used.discard(name)
        else:
            hint = (" (a gradient-strategy model: search with --activation-granularity layer "
                    "for one type per tensor)" if step.kind == "cast/feature" else "")
            raise ExportError(f"{step.name}: {step.kind} steps are not supported by the hls4ml "
                              "export (it supports MLPs: dense + quantized_bits/relu); the "
                              f"integer engine still runs it{hint}")
    return layers, prec


def _unused_name(name: str, used: set) -> str:
    """`name`, or `name_2`, `name_3`, ... if it is taken; added to `used`."""
    k, out = 1, name
    while out in used:
        k += 1
        out = f"{name}_{k}"
    used.add(out)
    return out


def _room_to_round(prec: dict, prev: tuple, step) -> FixedType | None:
    """Room for a cast whose rounding reads a bit above its input type's top (its fraction
    bits beyond the output's are at least its width: a layer whose weights all quantize to 0
    has an accumulator such as ap_fixed<2,-4>, cast to ap_fixed<4,1>): the C simulation's
    ap_types then failed an assertion ('Attempting to read bit beyond MSB') that killed the
    process. A dense layer's accumulator is widened in place (sign extension to more
    integer bits keeps every value); after the input or another cast the wider type is
    returned, for a layer of its own between the two: widening a cast's result moved its
    saturation bound (ap_ufixed<4,0> saturating at 0.9375 became ap_ufixed<5,1> at 1.9375,
    and the C simulation disagreed with the model), and a wider input type would saturate
    raw inputs differently."""
    name, keys, t = prev
    out = step.out_type
    if t is None or t.frac - out.frac < t.width:
        return None
    w = t.frac - out.frac + 1
    wide = FixedType(w, w - t.frac, t.signed, t.rounding, t.overflow)
    if "accum" not in keys:
        return wide
    for k in keys:
        prec[name]["Precision"][k] = str(wide)
    return None


def hls4ml_model(eng: IntegerModel, out_dir: str | Path, backend: str = "Vivado",
                 part: str = DEFAULT_PART, clock_period: float = 5.0,
                 project_name: str = "hetq_model"):
    """An hls4ml `ModelGraph` (io_parallel, latency strategy) with the engine's precisions;
    `write()` it for synthesis or `compile()` it for the C simulation."""
    _require_hls4ml()
    from hls4ml.model.graph import ModelGraph
    from hls4ml.utils.config import create_config

    if backend not in BACKENDS:
        raise ExportError(f"backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    layers, prec = layer_list(eng)
    config = create_config(output_dir=str(out_dir), project_name=project_name, backend=backend,
                           part=part, clock_period=clock_period, io_type="io_parallel")
    config["HLSConfig"] = {
        "Model": {"Precision": "ap_fixed<16,6>", "ReuseFactor": 1, "Strategy": "Latency",
                  "BramFactor": 1_000_000_000, "TraceOutput": False},
        "LayerName": prec,
    }
    return ModelGraph.from_layer_list(config, layers)


def csim_predict(hls_model, x: np.ndarray) -> np.ndarray:
    """Run the compiled C simulation (double interface: exact for wide logits) in a child
    process: a failed assertion in hls4ml's C types aborts the process that runs it, and in
    this one it took the whole export (and a notebook's kernel) with it."""
    def run():
        y = hls_model.predict(np.ascontiguousarray(x, dtype=np.float64))
        return np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    return in_child(run, "hls4ml's C simulation")


def in_child(fn, what: str):
    """`fn()` run in a forked child, its result sent back by pickle; ExportError naming the
    signal when the child dies (abort, segfault), or naming the exception it raised. Runs in
    this process where there is no fork (Windows)."""
    if not hasattr(os, "fork"):  # pragma: no cover - POSIX here
        return fn()
    for stream in (sys.stdout, sys.stderr):  # (else the child's copy is written twice)
        stream.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        try:
            os.close(r)
            faulthandler.disable()  # (its dump of this child's stack would only confuse)
            try:
                payload = ("ok", fn())
            except BaseException as e:
                payload = ("error", f"{type(e).__name__}: {e}")
            with os.fdopen(w, "wb") as f:
                pickle.dump(payload, f)
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C: the child goes too
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        raise ExportError(f"{what} was killed by {signal.Signals(sig).name} (its own message, "
                          "if any, is printed above, e.g. a failed assertion in hls4ml's C "
                          "types)")
    if not data:
        raise ExportError(f"{what} ended without a result (exit status "
                          f"{os.waitstatus_to_exitcode(status)})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise ExportError(f"{what} failed: {value}")
    return value


def export_hls4ml(eng: IntegerModel, out_dir: str | Path, x: torch.Tensor | None = None,
                  backend: str = "Vivado", compile: bool = True, locked: bool = False, **kw):
    """Write the project; with `compile`, build the C simulation and, given inputs `x`,
    compare its outputs with the engine. Returns (hls_model, BitExactReport or None).
    `out_dir` must be new, empty, or an earlier project (`earlier_project`), which is
    replaced once the new one is complete; if the export fails, it is left as it was.
    locked: the caller holds `project_lock(out_dir)` already."""
    check_engine(eng, "export_hls4ml")
    out_dir = _project_path(out_dir)
    with contextlib.nullcontext() if locked else project_lock(out_dir):
        return _export_hls4ml(eng, out_dir, x, backend, compile, **kw)


def _project_path(out_dir: str | Path) -> Path:
    """A link: the project where it points, the link kept (it was replaced by a folder, and
    its target marked as set aside)."""
    out_dir = Path(out_dir)
    return Path(os.path.realpath(out_dir)) if out_dir.is_symlink() else out_dir


def project_lock(out_dir: str | Path):
    """One export per project folder at a time (two built the C simulation in one folder:
    one failed to link, blamed g++, and deleted the other's finished project); `hetq export`
    holds it over all its outputs, so that a refused export writes no --qonnx either."""
    from ..files import folder_lock

    out_dir = _project_path(out_dir)
    return folder_lock(out_dir.parent, "--hls4ml", lock_name=f".{out_dir.name}.hetq.lock",
                       label=out_dir)


# in the project folder while an export writes and checks it: if it stays, that export was
# killed (kill -9, a power cut) and the project is not a checked one
UNFINISHED = "HETQ_EXPORT_UNFINISHED.txt"


SET_ASIDE = "HETQ_SET_ASIDE.txt"  # in a project an export set aside (only those come back)


def _aside(out_dir: Path) -> Path:
    """Where an export keeps the earlier project until its own is complete (hidden, and
    named for hetq: a user's own FOLDER.previous was taken for one and deleted)."""
    return out_dir.with_name(f".{out_dir.name}.hetq-previous")


def _recover(out_dir: Path, aside: Path) -> None:
    """Undo what a killed export left (the lock is held, so no export runs here now): its
    unfinished project goes, and the earlier, checked project it had set aside in `aside`
    comes back (it stayed there, and the next export deleted it, keeping the unchecked
    one). A folder at `aside` without the SET_ASIDE mark is not hetq's: an ExportError."""
    unfinished = (out_dir / UNFINISHED).exists()
    if aside.exists() and not (aside / SET_ASIDE).is_file():
        raise ExportError(f"{aside} is in the way (hetq keeps an earlier project there while "
                          "it replaces it, and this one is not such a project); move it away")
    if aside.is_dir():
        if unfinished or not out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
            aside.rename(out_dir)
            (out_dir / SET_ASIDE).unlink()
            warnings.warn(f"{out_dir}: an export killed before it had checked its project "
                          f"left it here; the earlier project (set aside in {aside.name}) is "
                          "back", stacklevel=3)
        else:  # killed after its project was complete: only the old copy was left
            shutil.rmtree(aside)
    elif unfinished:
        shutil.rmtree(out_dir)
        warnings.warn(f"{out_dir}: removed the unfinished project of an export that was "
                      "killed", stacklevel=3)


def _export_hls4ml(eng, out_dir: Path, x, backend, compile, **kw):
    aside = _aside(out_dir)
    _recover(out_dir, aside)
    earlier = earlier_project(out_dir)
    existed = out_dir.is_dir()
    aside = aside if earlier else None
    if aside is not None:  # kept until the new project is complete, restored if it fails;
        # marked before the move, which takes the mark with it, and neither cut short by a
        # signal (a stop between them left an unmarked copy that the next export refused
        # as 'not such a project')
        from ..cli import deferred_signals

        with deferred_signals(signal.SIGINT, signal.SIGTERM):
            (out_dir / SET_ASIDE).write_text(f"the earlier hls4ml project of {out_dir}, kept "
                                             "by hetq export until the new one is complete\n")
            out_dir.rename(aside)
    try:
        os.makedirs(out_dir, exist_ok=True)
        (out_dir / UNFINISHED).write_text(
            "hetq export is writing and checking this hls4ml project. If this file is still "
            "here, that export was killed: the project is unchecked (the earlier one, if any, "
            f"is in {_aside(out_dir).name}; the next export into this folder restores it).\n")
        hls_model = hls4ml_model(eng, out_dir, backend=backend, **kw)
        report = None
        if compile:
            try:
                hls_model.compile()
            except Exception as e:  # (no compiler: a traceback from inside hls4ml)
                raise ExportError(
                    f"the C simulation could not be built ({str(e).splitlines()[0]}; "
                    "hls4ml compiles it with g++, which must be on the PATH); --no-compile "
                    "writes the project without it") from None
            if x is not None:
                xg = eng.on_grid(x).numpy()
                report = eng.compare(x, torch.from_numpy(csim_predict(hls_model, xg)),
                                     f"hls4ml C-sim ({backend})")
        else:
            hls_model.write()
        (out_dir / UNFINISHED).unlink()
    except BaseException:  # nothing half-written stays; an earlier project comes back
        shutil.rmtree(out_dir, ignore_errors=True)
        if aside is not None:
            aside.rename(out_dir)
            (out_dir / SET_ASIDE).unlink(missing_ok=True)
        elif existed:
            out_dir.mkdir()
        raise
    if aside is not None:  # (a stop mid-way left a copy without its mark, refused next)
        from ..cli import deferred_signals

        with deferred_signals(signal.SIGINT, signal.SIGTERM):
            shutil.rmtree(aside)
    return hls_model, report


def earlier_project(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds an earlier hls4ml project (its hls4ml_config.yml), which
    `export_hls4ml` replaces whole (no firmware files or C-sim libraries of another model
    stay beside the new ones). Raises ValueError when it is a folder with other files: the
    project's files would be mixed into them."""
    p = Path(out_dir)
    if not p.is_dir() or not any(p.iterdir()):
        return False
    if (p / "hls4ml_config.yml").is_file():
        return True
    raise ValueError(f"{p} is not empty and holds no hls4ml project (no hls4ml_config.yml); "
                     "give a new or empty folder for the project")
