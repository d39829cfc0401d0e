"""``modelsize``: summary (predict), measure, profile (predict + measure + compare + save), report
(saved results as one HTML page).

The only module that prints. Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import sys
from typing import Any, NoReturn, Sequence

from profiler import workflow
from profiler.distributed import STRATEGIES
from profiler.dtypes import MODEL_DTYPES
from profiler.errors import ModelsizeError
from profiler.step import LOSSES
from profiler.engine.optimizers import CATALOG as OPTIMIZER_CATALOG, DEFAULT as DEFAULT_OPTIMIZERS
from profiler.report.tables import render

EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3
EXIT_PREDICTION_FAILED = 4      # fit --verify: the measured peak did not stay within the prediction
EXIT_CLOSED_PIPE = 141          # 128 + SIGPIPE, as a shell reports a tool whose reader went away
#: options whose value may look like an option to argparse ("-5GiB"): joined as "--memory=-5GiB"
#: so that the size's own check answers (a negative size), not "expected one argument"
_SIZE_OPTIONS = ("--memory", "--reserve", "--margin", "--comm-reserve")
COMPARE_FORMATS = ("text", "markdown", "csv", "json")
#: sweep's default batches
SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: the largest batch modelsize accepts: torch indexes many kernels with 32-bit integers
MAX_BATCH = 2 ** 31 - 1
DEFAULT_WARMUP = 3              # untimed runs of each timed function
DEFAULT_REPEATS = 20            # timed runs of each
DEFAULT_TIME_BUDGET_S = 10.0    # seconds of runs of each, when no count was given (--time-budget)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status."""
    return _command(_parse(argv))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(_joined_sizes(sys.argv[1:] if argv is None else list(argv)))
    if getattr(args, "factory_timeout", None) is not None:
        from profiler.frontends.source import FACTORY_TIMEOUT_ENV
        os.environ[FACTORY_TIMEOUT_ENV] = repr(args.factory_timeout)   # a measuring child keeps it
    return args


def _command(args: argparse.Namespace) -> int:
    """The collector is paused while a command that only predicts runs (see :func:`_predicts_only`)
    and resumed when it returns."""
    paused = _predicts_only(args) and gc.isenabled()
    if paused:
        gc.disable()
    try:
        return args.run(args)
    except ModelsizeError as error:
        print(f"modelsize: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("modelsize: interrupted: the measurement was stopped and nothing of it was saved", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `modelsize ... | head`: the reader has gone; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no error at interpreter exit
        return EXIT_CLOSED_PIPE
    finally:
        if paused:
            gc.enable()


def run() -> NoReturn:
    """The ``modelsize`` program: :func:`main`, then, after a command that only predicts, a quick exit.

    Such a command leaves torch's import behind (torch._dynamo and sympy too, which FakeTensorMode
    imports) and nothing else that needs tearing down: the output is flushed and the ``atexit``
    handlers run (``weakref.finalize``'s, ``multiprocessing``'s), then the process ends without the
    interpreter's teardown, which collects and frees every object and runs the C++ libraries'
    destructors: measured on the 7B decoder's summary, 0.3-0.6 s, and 128 MiB more peak RSS with
    torch's CUDA build (its libraries' pages touched on the way out).
    """
    args = _parse(None)
    status = _command(args)
    if not _predicts_only(args):
        sys.exit(status)
    try:
        sys.stdout.flush()
    except BrokenPipeError:   # the reader went away after the last write
        status = EXIT_CLOSED_PIPE
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(status)


def _predicts_only(args: argparse.Namespace) -> bool:
    """``summary``, and ``fit`` without ``--verify``: nothing is built or measured, only predicted.
    Their passes pause the garbage collector anyway (``engine.torch_module._run``); the imports and
    the module's construction before them made 730 collections costing 0.4 s (the 7B decoder)."""
    return args.run is _summary or (args.run is _fit and not args.verify)


def _joined_sizes(argv: list[str]) -> list[str]:
    joined: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _SIZE_OPTIONS and i + 1 < len(argv) and argv[i + 1][:2].startswith("-") \
                and argv[i + 1][1:2].isdigit():
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        joined.append(argv[i])
        i += 1
    return joined


def _reference(args: argparse.Namespace) -> dict[str, Any]:
    """What names the model: ``frontends.source.resolve``'s arguments (plain data, so a measuring
    child process can resolve it again)."""
    return {"model": args.spec, "input_shape": args.input_shape, "input_dtype": args.input_dtype,
            "int_high": args.int_high, "hf_task": args.hf_task, "seq_len": args.seq_len}


def _source(args: argparse.Namespace):
    """The model the command names, with its inputs (torch models) — any kind: see frontends.source."""
    from profiler.frontends.source import resolve
    reference = _reference(args)
    return resolve(reference.pop("model"), **reference)


def _isolated(args: argparse.Namespace) -> dict[str, Any] | None:
    """Measurements run in a child process (``measuring.isolated``) unless --in-process; its
    server starts now, importing torch while this process predicts."""
    if args.in_process:
        return None
    from profiler.measuring import isolated
    isolated.prepare()
    return _reference(args)


def _name(source) -> str:
    return getattr(source, "name", "the model")


def _summary(args: argparse.Namespace) -> int:
    source = _source(args)
    if args.world_size is not None:
        return _distributed(args, source, measure=False)
    device_kind = args.device_kind or ("cuda" if args.device not in (None, "cpu") else "cpu")
    result = workflow.summary(source, batch=args.batch, dtype=args.dtype, loss=args.loss,
                              device_kind=device_kind, optimizers=args.optimizers,
                              amp=_amp_dtype(args, device_kind), checkpoint=args.checkpoint,
                              threads=args.threads, input_grad=args.input_grad, depth=args.depth,
                              time_on=args.device, progress=_progress)
    _emit(result, args)
    return 0


def _progress(message: str) -> None:
    """What a long preparation is doing (calibrating this machine's time model), on stderr."""
    print(f"modelsize: calibrating this machine's time model (once; cached): {message}", file=sys.stderr)


def _calibrate(args: argparse.Namespace) -> int:
    from profiler.engine.host_calls import WATCHED
    from profiler.measuring.calibrate import cache_path, cpu_model_for, machine_key
    import torch
    threads = args.threads or torch.get_num_threads()
    model, _ = cpu_model_for(threads, recalibrate=True, progress=_progress)
    print(f"Calibrated: {model.source}")
    for key, curve in sorted(model.curves.items()):
        if key.startswith("matmul/"):
            print(f"  matrix multiply, {key.split('/')[1]}: {curve.work[-1] / curve.seconds[-1] / 1e9:,.1f} GFLOP/s "
                  f"at {curve.work[-1] / 1e9:.2g} GFLOP, {curve.seconds[0] * 1e6:.1f} µs for the smallest")
    print(f"  memory bandwidth: {model.bandwidth / 1e9:,.1f} GB/s; a view: {model.view_s * 1e6:.2f} µs")
    print("  beyond the operators, per call: " + ", ".join(f"{phase} {seconds * 1e6:+.2f} µs"
                                                           for phase, seconds in model.per_op_s.items()))
    if model.per_cpp_s:
        print("  the same, for a call C++ issued: " + ", ".join(f"{phase} {seconds * 1e6:+.2f} µs"
                                                              for phase, seconds in model.per_cpp_s.items()))
    print("  more per call Python issued: " + ", ".join(f"{phase} {seconds * 1e6:+.2f} µs"
                                                         for phase, seconds in model.per_python_s.items())
          + f"; a module call {model.module_s * 1e6:.2f} µs; an optimizer step {model.optimizer_step_s * 1e6:.1f} µs")
    print("  a host call the model's Python makes (" + ", ".join(f"{module}.{name}" for module, name in WATCHED)
          + f"): {model.host_call_s * 1e6:.1f} µs")
    print(f"  operators with their own curve: {len(model.op_curves)}")
    print(f"Saved: {cache_path(machine_key(threads))}")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from profiler.measuring.devices import DoesNotFit
    source = _source(args)
    isolate_from = _isolated(args)
    try:
        measured, options = workflow.measure(source, **_measure_options(args), isolate_from=isolate_from)
    except DoesNotFit as error:
        print(f"modelsize: {_name(source)} at batch {args.batch} does not fit: {error}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    from profiler.measuring.machine import machine_info
    result = {"model": _name(source), "options": options, "machine_info": machine_info(), "measured": measured}
    _emit(result, args)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from profiler.measuring.devices import DoesNotFit
    from profiler.report.results import check_writable, save
    _html_needs_format(args)
    source = _source(args)
    if not args.no_save:
        check_writable(args.results_dir)
    if args.world_size is not None:
        from profiler.distributed.launch import check_world
        check_world(args.world_size, _device_kind(args))   # gloo ranks on CPUs, NCCL ranks on GPUs
        result = workflow.distributed(source, _reference(args), **_distributed_options(args), measure=True,
                                      device_kind=_device_kind(args))
    else:
        isolate_from = _isolated(args)
        try:
            result = workflow.profile(source, **_measure_options(args), depth=args.depth,
                                      isolate_from=isolate_from, progress=_progress)
        except DoesNotFit as error:
            print(f"modelsize: {_name(source)} at batch {args.batch} does not fit: {error}", file=sys.stderr)
            return EXIT_DOES_NOT_FIT
    unsaved = None
    if not args.no_save:
        try:
            result["saved_to"] = str(save(result, args.results_dir))
        except OSError as error:   # the figures are still printed: the measurement is not lost
            unsaved = f"could not save the result in {args.results_dir}: {error.strerror or error}"
    if args.format == "html":
        _html([result], args.output or (result["saved_to"].removesuffix(".json") + ".html"
                                        if "saved_to" in result else None))
    else:
        _emit(result, args)
    if "saved_to" in result and args.format != "json":
        print(f"Saved: {result['saved_to']}")
    if unsaved:
        print(f"modelsize: error: {unsaved}", file=sys.stderr)
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    from profiler.report import compare
    _html_needs_format(args)
    loaded = compare.load_results(args.results)
    data = compare.compare(loaded, baseline=args.baseline, devices=args.device, what_if=workflow.what_if)
    if args.format == "html":
        _html(loaded, args.output, sources=[r["_file"] for r in loaded])
    else:
        _emit_comparison(data, args.format)
    return 0


def _emit_comparison(data: dict[str, Any], form: str) -> None:
    from profiler.report import compare
    if form == "json":
        print(json.dumps(data, indent=2))
    elif form == "csv":
        print(compare.render_csv(data), end="")
    else:
        print(compare.render_table(data, markdown=form == "markdown"), end="")


def _sweep(args: argparse.Namespace) -> int:
    from profiler import sweeping
    from profiler.report import compare
    from profiler.report.results import check_writable
    _html_needs_format(args)
    source = _source(args)
    check_writable(args.results_dir)
    options = _measure_options(args)
    del options["batch"], options["dtype"]
    events = sweeping.run(source, model=_reference(args), batches=args.batch, dtypes=args.dtype,
                       results_dir=args.results_dir, resume=args.resume, isolate_from=_isolated(args),
                       depth=args.depth, progress=_progress, **options)
    kept: list[str] = []
    bar = _SweepBar()
    running: dict[str, Any] = {}
    try:
        for event in events:
            bar.show(event)
            running = event.cell if event.status == "running" else {}
            if event.path is not None:
                kept.append(str(event.path))
    except (KeyboardInterrupt, ModelsizeError) as stopped:
        bar.close()
        if isinstance(stopped, ModelsizeError) and not running and not kept:
            raise   # refused before any cell ran: the usual one line
        new = len(kept) - bar.skipped
        what = "interrupted: the cell" if isinstance(stopped, KeyboardInterrupt) else f"error: {stopped}: the cell"
        print(f"modelsize: {what} at batch {running.get('batch', '?')}, {running.get('dtype', '?')} was stopped; "
              f"kept {new} finished cell file{'s' * (new != 1)} in {args.results_dir} (--resume goes on from there)",
              file=sys.stderr)
        return 130 if isinstance(stopped, KeyboardInterrupt) else EXIT_BAD_INPUT
    bar.close()
    loaded = compare.load_results(kept)
    if args.format == "html":
        _html(loaded, args.output, sources=kept)
    else:
        _emit_comparison(compare.compare(loaded), args.format)
    return 0


class _SweepBar:
    """A sweep's progress on stderr: a tqdm bar on a terminal (the cell running, the last peak
    measured), plain lines otherwise (a log, a pipe, CI). tqdm rather than rich: transformers
    and huggingface_hub already bring it, it is small, and one bar is all this needs."""

    def __init__(self) -> None:
        self.skipped = 0
        self.peak = ""
        self.bar: Any = None

    def show(self, event: Any) -> None:
        from profiler.report import units
        cell = f"batch {event.cell['batch']}, {event.cell['dtype']}"
        self.skipped += event.status == "skipped"
        if event.status == "measured":
            self.peak = f"peak {units.nbytes(event.peak_bytes)}"
        outcome = {"skipped": "already saved, skipped", "running": "measuring", "measured": self.peak,
                   "does not fit": f"does not fit: {event.message}"}[event.status]
        if not sys.stderr.isatty():
            print(f"modelsize: sweep [{event.index + 1}/{event.total}] {cell}: {outcome}", file=sys.stderr)
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=event.total, file=sys.stderr, unit="cell", dynamic_ncols=True)
        if event.status == "running" and self.peak:
            outcome += f" (last {self.peak})"
        self.bar.set_description_str(cell, refresh=False)
        self.bar.set_postfix_str(outcome[:60], refresh=False)
        if event.status == "running":
            self.bar.refresh()
        else:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(args: argparse.Namespace) -> int:
    from profiler.planning.fit import parse_size
    from profiler.report.results import read
    budget = None if args.budget is None else parse_size(args.budget, field="budget")
    _html([read(path) for path in args.files], args.output, title=args.title, budget_bytes=budget,
          fit_batch=args.fit_batch, sources=args.files)
    return 0


def _html_needs_format(args: argparse.Namespace) -> None:
    """-o names the HTML page: refused, before anything runs, without --format html."""
    if args.output and args.format != "html":
        raise ModelsizeError("writes the HTML report", field="output", expected="--format html with -o",
                             received=f"--format {args.format}")


def _html(results: list[dict[str, Any]], output: str | None, **options: Any) -> None:
    """The HTML report of ``results`` written to ``output`` (and its path printed), or printed
    when there is no file to write it to. Which result a bad one is: its file, or its position."""
    from profiler.report.html import render_report
    page = render_report(results, **options)
    if output is None:
        print(page, end="")
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(page)
    except OSError as error:
        raise ModelsizeError(f"cannot write the report ({error.strerror or error.__class__.__name__})",
                             field="output", received=output) from None
    print(f"Report: {output} ({len(page.encode()) / 1024:,.0f} KiB)")


def _fit(args: argparse.Namespace) -> int:
    from profiler.planning import fit
    from profiler.report.fit_tables import render_fit
    source = _source(args)
    budget = fit.make_budget(memory=args.memory, device=args.device, target=args.target, reserve=args.reserve,
                             margin=args.margin, comm_reserve=args.comm_reserve, world=args.world_size or 1)
    if args.world_size is not None:
        return _distributed_fit(args, source, budget)
    answer, result = workflow.fit(source, budget, device=args.device, mode="inference" if args.inference else args.train,
                                  dtype=args.dtype, loss=args.loss, amp=_amp_dtype(args, budget.target),
                                  threads=args.threads)
    if args.verify:
        result["verification"] = fit.verify(source, answer, isolate_from=_isolated(args)).as_dict()
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render_fit(result, markdown=args.format == "markdown", explain=args.explain), end="")
    if not answer.batch:
        return EXIT_DOES_NOT_FIT
    return EXIT_PREDICTION_FAILED if result.get("verification", {}).get("held") is False else 0


def _distributed(args: argparse.Namespace, source: Any, *, measure: bool) -> int:
    """``summary --world-size N``: every rank's predicted peak (no process group needed)."""
    result = workflow.distributed(source, _reference(args), **_distributed_options(args), measure=measure,
                                  device_kind=_device_kind(args))
    _emit(result, args)
    return 0


def _distributed_options(args: argparse.Namespace) -> dict[str, Any]:
    from profiler.distributed.strategies import Strategy
    strategy = Strategy(args.strategy, fsdp_wrap=args.fsdp_wrap or (),
                        reshard_after_forward=not args.no_reshard_after_forward,
                        bucket_cap_mb=args.bucket_cap_mb, gradient_as_bucket_view=args.gradient_as_bucket_view)
    checkpoint = getattr(args, "checkpoint", ())
    if checkpoint is True:
        raise ModelsizeError("with --world-size, --checkpoint names module classes", field="checkpoint",
                             expected="class names, e.g. LlamaDecoderLayer", received="every layer")
    return {"world": args.world_size, "strategy": strategy, "batch": getattr(args, "batch", 1), "dtype": args.dtype,
            "loss": args.loss, "optimizers": getattr(args, "optimizers", ()), "amp": _amp_dtype(args, "cpu"),
            "threads": args.threads or 1, "checkpoint": tuple(checkpoint)}


def _device_kind(args: argparse.Namespace) -> str:
    """summary's --device-kind (or cuda with --device NAME), cpu otherwise."""
    return getattr(args, "device_kind", None) or ("cuda" if getattr(args, "device", None) not in (None, "cpu")
                                                  else "cpu")


def _distributed_fit(args: argparse.Namespace, source: Any, budget: Any) -> int:
    """``fit --world-size N``: the largest per-rank batch every rank fits (``distributed.fit``)."""
    from profiler.distributed.fit import solve
    from profiler.distributed.run import job_for
    from profiler.report.distributed_tables import render_distributed_fit
    if args.inference:
        raise ModelsizeError("a distributed fit is for training", field="inference",
                             expected="--train OPTIMIZER with --world-size")
    options = _distributed_options(args)
    job = job_for(source, _reference(args), world=options["world"], strategy=options["strategy"], batch=2,
                  optimizer=args.train, loss=args.loss, dtype=args.dtype, amp=options["amp"],
                  threads=options["threads"], checkpoint=options["checkpoint"])
    result = {"model": _name(source), **solve(job, budget)}
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render_distributed_fit(result, markdown=args.format == "markdown"), end="")
    return 0 if result["batch_per_rank"] else EXIT_DOES_NOT_FIT


def _emit(result: dict[str, Any], args: argparse.Namespace) -> None:
    if args.format == "json":
        print(json.dumps(result, indent=2))
    elif "distributed" in result:
        from profiler.report.distributed_tables import render_distributed
        print(render_distributed(result, markdown=args.format == "markdown"), end="")
    else:
        print(render(result, markdown=args.format == "markdown", explain=args.explain,
                     depth=getattr(args, "depth", None)), end="")


def _measure_options(args: argparse.Namespace) -> dict[str, Any]:
    kind = None
    if (args.amp or args.amp_dtype) and not args.amp_dtype:   # the default dtype depends on the device
        import torch
        kind = "cuda" if (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda" else "cpu"
    return {"batch": args.batch, "dtype": args.dtype, "loss": args.loss, "device": args.device,
            "optimizers": args.optimizers,
            "warmup": DEFAULT_WARMUP if args.warmup is None else args.warmup,
            "repeats": DEFAULT_REPEATS if args.repeats is None else args.repeats, "threads": args.threads,
            "amp": _amp_dtype(args, kind or "cpu"), "checkpoint": args.checkpoint,
            "input_grad": args.input_grad, "force": args.force, "layer_repeats": args.layer_repeats,
            "time_budget_s": _time_budget(args)}


def _time_budget(args: argparse.Namespace) -> float | None:
    """--time-budget, unless a count of runs was given: an explicit count is run in full."""
    explicit = (args.warmup, args.repeats, args.layer_repeats) != (None, None, None)
    return None if explicit or not args.time_budget else float(args.time_budget)


def _amp_dtype(args: argparse.Namespace, device_kind: str) -> str | None:
    """--amp's dtype: --amp-dtype, else bfloat16 on the CPU and float16 on CUDA; None without."""
    if not (args.amp or args.amp_dtype):
        return None
    return args.amp_dtype or ("float16" if device_kind == "cuda" else "bfloat16")


def _layer_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected layer names separated by commas, received {text!r}")
    return names


def _optimizer_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OPTIMIZER_CATALOG]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected names among {', '.join(OPTIMIZER_CATALOG)}, received {text!r}")
    return names


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes separated by commas, received {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive sizes, received {text!r}")
    return dims


def _seconds(text: str) -> float:
    """A number of seconds >= 0 (argparse's type)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, received {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, received {text!r}")
    return value


def _batch_list(text: str) -> tuple[int, ...]:
    return tuple(_batch(part.strip()) for part in text.split(","))


def _dtype_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n not in MODEL_DTYPES for n in names):
        raise argparse.ArgumentTypeError(f"expected dtypes among {', '.join(MODEL_DTYPES)}, received {text!r}")
    return names


def _device_list(text: str) -> tuple[str, ...]:
    from profiler.planning.accelerators import lookup
    try:
        return tuple(lookup(n).name for n in text.split(","))
    except ModelsizeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _batch(text: str) -> int:
    value = _positive(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"expected a batch of at most 2**31-1 = {MAX_BATCH:,}, received {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option ending in one line (its usage stays behind --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="modelsize",
        description="Predict a model's parameters, MACs and memory layer by layer; measure them in "
                    "PyTorch; compare.")
    commands = parser.add_subparsers(dest="command", required=True)

    def model(sub: argparse.ArgumentParser, *, spec_optional: bool = False) -> None:
        """What names the model, for every command: any kind of model, with its inputs."""
        sub.add_argument("spec", nargs="?" if spec_optional else None, metavar="MODEL",
                         help="a .yaml/.json model spec, a Keras to_json() file, a Hugging Face config.json, "
                              "package.module:factory (IMPORTED and CALLED: its code runs; only name code you "
                              "trust), or a built-in model (digits, digits-theano, dense-514, conv-224, bn-conv)"
                              + ("; default: digits, the seed's 28×28 classifier" if spec_optional else ""))
        sub.add_argument("--input-shape", type=_shape, action="append",
                         help="for package.module:factory: one sample's input shape, batch excluded "
                              "(e.g. 3,224,224); repeat for several inputs")
        sub.add_argument("--input-dtype", choices=("float", "int64"), action="append",
                         help="for package.module:factory: int64 for token ids; once, or once per input")
        sub.add_argument("--int-high", type=_positive, action="append",
                         help="token ids are drawn below this (default: the smallest nn.Embedding's size)")
        sub.add_argument("--hf-task", default=None,
                         help="for a Hugging Face config.json: causal-lm, masked-lm, seq-cls, token-cls, "
                              "seq2seq-lm, image-cls or base (default: from the config's architectures)")
        sub.add_argument("--seq-len", type=_positive, default=None,
                         help="for a Hugging Face text model: tokens per sample (default: min(128, the "
                              "model's maximum))")
        sub.add_argument("--factory-timeout", type=_seconds, default=None, metavar="SECONDS",
                         help="for package.module:factory: how long importing it, and each call of it, may "
                              "take before it is reported as hanging (default 60; 0: no limit)")
        sub.add_argument("--threads", type=_positive, default=None,
                         help="CPU threads the run uses (kernels' scratch depends on them; default: torch's, "
                              "which honours OMP_NUM_THREADS)")

    def html_output(sub: argparse.ArgumentParser, default: str = "printed") -> None:
        sub.add_argument("-o", "--output", metavar="FILE", default=None,
                         help=f"with --format html: write the page here (default: {default})")

    def common(sub: argparse.ArgumentParser, *, spec_optional: bool = False, grid: bool = False,
               formats: tuple[str, ...] = ("text", "markdown", "json")) -> None:
        """``grid``: --batch and --dtype take lists (sweep)."""
        model(sub, spec_optional=spec_optional)
        if grid:
            sub.add_argument("--batch", type=_batch_list, default=SWEEP_BATCHES, metavar="B1,B2,...",
                             help="batch sizes, comma-separated (default " + ",".join(map(str, SWEEP_BATCHES)) + ")")
            sub.add_argument("--dtype", type=_dtype_list, default=("float32",), metavar="D1,D2,...",
                             help="dtypes, comma-separated among " + ", ".join(MODEL_DTYPES) + " (default float32)")
        else:
            sub.add_argument("--batch", type=_batch, default=32, help="batch size (default 32)")
            sub.add_argument("--dtype", choices=MODEL_DTYPES, default="float32")
        sub.add_argument("--loss", choices=LOSSES, default="cross_entropy",
                         help="training-step loss: cross_entropy (integer targets over the last axis, "
                              "every position) or mse")
        sub.add_argument("--optimizers", type=_optimizer_list, default=DEFAULT_OPTIMIZERS,
                         help="training steps to predict and measure, comma-separated among "
                              + ", ".join(OPTIMIZER_CATALOG) + " (default sgd,adam)")
        sub.add_argument("--format", choices=formats, default="text",
                         help="html: one self-contained page with charts (see 'report'), written with -o, "
                              "else beside the saved result" if "html" in formats else None)
        sub.add_argument("--depth", type=_positive, default=None,
                         help="show nested models' layers down to this depth (1: only the model's own; "
                              "default: all)")
        sub.add_argument("--explain", action="store_true",
                         help="show each layer's parameter arithmetic and what makes up each peak")
        sub.add_argument("--amp", action="store_true",
                         help="mixed precision: float32 weights, forward and loss under torch.autocast "
                              "(bfloat16 on the CPU, float16 on CUDA unless --amp-dtype says otherwise)")
        sub.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default=None,
                         help="autocast's dtype for --amp (implies --amp)")
        sub.add_argument("--checkpoint", nargs="?", const=True, default=(), type=_layer_list,
                         metavar="LAYERS",
                         help="activation checkpointing (torch.utils.checkpoint, non-reentrant) of every "
                              "layer, or of the comma-separated layers or nested models named (with "
                              "--world-size: of the module classes named)")
        sub.add_argument("--input-grad", action="store_true",
                         help="training also computes the gradient of each floating input "
                              "(x.requires_grad_(): saliency maps, adversarial examples)")

    def measuring(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--device", choices=("cpu", "cuda"), default=None,
                         help="default: cuda when available, else cpu")
        sub.add_argument("--warmup", type=int, default=None,
                         help=f"untimed runs of the forward pass and of each training step first "
                              f"(default {DEFAULT_WARMUP}, within --time-budget)")
        sub.add_argument("--repeats", type=_positive, default=None,
                         help=f"timed runs of the forward pass and of each training step (default "
                              f"{DEFAULT_REPEATS}, within --time-budget)")
        sub.add_argument("--time-budget", type=_seconds, default=DEFAULT_TIME_BUDGET_S, metavar="SECONDS",
                         help=f"without --warmup, --repeats or --layer-repeats: each timed function's "
                              f"warm-up, timed and per-operator runs stop once they took this long, a "
                              f"minimum of each run (default {DEFAULT_TIME_BUDGET_S:g}; 0: no budget); "
                              f"the output says how many ran. A model whose runs take milliseconds runs them all")
        sub.add_argument("--layer-repeats", type=int, default=None,
                         help="runs with each operator timed, for the time per layer (default: 3, or "
                              "--repeats if fewer; 0: none)")
        sub.add_argument("--in-process", action="store_true",
                         help="measure in this process (default: in a child process, so that running out of "
                              "memory, even killed by the kernel, is reported as 'does not fit')")
        sub.add_argument("--force", action="store_true",
                         help="measure even when the predicted peak is more than the device has free "
                              "(by default such a run is 'does not fit', exit status 3, nothing built)")

    def distributed(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--world-size", type=_positive, default=None, metavar="N",
                         help="train data-parallel over N ranks: every rank's steady training-step peak, "
                              "predicted on a fake process group (profile: also measured on N local gloo ranks)")
        sub.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                         help="with --world-size: DistributedDataParallel, FSDP2's fully_shard, or ZeRO-1 "
                              "(ZeroRedundancyOptimizer over DDP) (default ddp)")
        sub.add_argument("--fsdp-wrap", type=_layer_list, default=(), metavar="CLASSES",
                         help="fsdp: module classes each wrapped by fully_shard, comma-separated, e.g. "
                              "Linear (per module) or LlamaDecoderLayer (per block); the root is wrapped last "
                              "(default: the root only)")
        sub.add_argument("--no-reshard-after-forward", action="store_true",
                         help="fsdp: keep the unsharded parameters from forward to backward")
        sub.add_argument("--bucket-cap-mb", type=float, default=25.0,
                         help="ddp, zero1: DDP's gradient bucket size in MiB (default 25)")
        sub.add_argument("--gradient-as-bucket-view", action="store_true",
                         help="ddp, zero1: gradients are views into DDP's buckets")

    summary = commands.add_parser(
        "summary", help="predict without building the model",
        description="Predict without building the model. SPEC may also be package.module:factory, a "
                    "torch model: that module is IMPORTED (its code runs) and the factory is CALLED with "
                    "no arguments under the meta device, so no weights are allocated; give the input with "
                    "--input-shape. Only name code you trust.")
    common(summary)
    distributed(summary)
    summary.add_argument("--device-kind", choices=("cpu", "cuda"), default=None,
                         help="predict memory for this kind of device (optimizer kernels differ; default: cpu, "
                              "cuda with --device NAME)")
    summary.add_argument("--device", metavar="NAME", default=None,
                         help="also predict the time of inference and of each training step: cpu (this machine, "
                              "calibrated once and cached, see 'calibrate') or a catalogued accelerator such as "
                              "h100-80gb (a roofline at its datasheet figures, until checked on that card)")
    summary.set_defaults(run=_summary)

    measure = commands.add_parser("measure", help="build the model in PyTorch and measure it")
    common(measure)
    measuring(measure)
    measure.set_defaults(run=_measure)

    profile = commands.add_parser("profile", help="predict, measure, compare and save a result")
    common(profile, spec_optional=True, formats=("text", "markdown", "json", "html"))
    measuring(profile)
    distributed(profile)
    profile.add_argument("--results-dir", default="results/runs", help="where result JSON files go")
    profile.add_argument("--no-save", action="store_true", help="do not write a result file")
    html_output(profile, "beside the result file, RESULT.html; printed with --no-save")
    profile.set_defaults(run=_profile)
    sweep = commands.add_parser(
        "sweep", help="profile over a grid of batches and dtypes, one result file per cell (resumable)",
        description="Profile the model at every batch × dtype, each cell measured in a child process and saved "
                    "as it finishes; a cell that runs out of memory is saved as 'does not fit' and the sweep goes "
                    "on. At the end, the cells side by side (as compare shows them).")
    common(sweep, grid=True, formats=(*COMPARE_FORMATS, "html"))
    measuring(sweep)
    sweep.add_argument("--results-dir", default="results/sweeps", help="where the cells' result files go")
    sweep.add_argument("--resume", action="store_true",
                       help="skip the cells whose options a result file in --results-dir already carries")
    html_output(sweep)
    sweep.set_defaults(run=_sweep)
    compare = commands.add_parser(
        "compare", help="result files side by side: models as rows, machines and settings as columns",
        description="Rows: a model with the options that change its figures (batch, dtype, autocast, loss, "
                    "optimizers, ...); columns: where it ran (machine, CPU or GPU, device, threads, torch). "
                    "Each cell: parameters, predicted and measured peaks, time, samples/s, speed-up.")
    compare.add_argument("results", nargs="+", metavar="RESULT",
                         help="result .json files (profile's, sweep's), or folders of them")
    compare.add_argument("--baseline", type=_positive, default=1, metavar="N",
                         help="the column speed-ups are measured against (default 1)")
    compare.add_argument("--device", type=_device_list, default=(), metavar="NAMES",
                         help="what-if columns, predicted: catalogued accelerators, comma-separated "
                              "(e.g. a100-80gb,h100-80gb); for results of specs")
    compare.add_argument("--format", choices=(*COMPARE_FORMATS, "html"), default="text",
                         help="html: one self-contained page with the runs' charts side by side (see 'report')")
    html_output(compare)
    compare.set_defaults(run=_compare)
    report = commands.add_parser(
        "report", help="saved results as one self-contained HTML page (charts as inline SVG, no JavaScript)",
        description="Draw saved result files (from 'profile', or 'summary --format json'): each run's memory "
                    "timeline predicted and measured, its peaks by category and its layers; several batches "
                    "of a model as peak against batch; several runs at one batch compared. Needs matplotlib "
                    "(pip install 'modelsize[report]').")
    report.add_argument("files", nargs="+", metavar="FILE", help="result JSON files")
    report.add_argument("-o", "--output", metavar="FILE", default=None, help="where the page goes (default: printed)")
    report.add_argument("--title", default=None, help="the page's title (default: the models' names)")
    report.add_argument("--budget", metavar="SIZE", default=None,
                        help="a memory budget drawn on the peak-against-batch charts, e.g. 24GiB")
    report.add_argument("--fit-batch", type=_batch, default=None, metavar="N",
                        help="fit's answer for that budget, marked on the peak-against-batch charts")
    report.set_defaults(run=_report)
    fit = commands.add_parser(
        "fit", help="the largest batch whose predicted peak fits a memory budget (solved, not probed)",
        description="Solve for the largest batch whose predicted peak fits the budget; exit status 3 when "
                    "not even batch 1 fits.")
    model(fit)
    budget = fit.add_mutually_exclusive_group(required=True)
    budget.add_argument("--memory", metavar="SIZE", help="the budget, e.g. 24GiB, 80GB, 512MiB or bytes")
    budget.add_argument("--device", metavar="NAME", help="a catalogued accelerator, e.g. h100-80gb, a100-40gb, "
                                                         "rtx-4090-24gb, t4-16gb (its memory; target cuda)")
    mode = fit.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", choices=tuple(OPTIMIZER_CATALOG), help="fit one training step with this optimizer")
    mode.add_argument("--inference", action="store_true", help="fit inference only")
    fit.add_argument("--target", choices=("cpu", "cuda"), default=None,
                     help="with --memory: predict for this kind of device (default cpu: exact bytes; cuda: "
                          "allocator rounding, context reserve, cuBLAS workspace, fragmentation margin)")
    fit.add_argument("--reserve", metavar="SIZE", default=None,
                     help="taken off the memory first (default: 512MiB on cuda for the CUDA context, 0 on cpu)")
    fit.add_argument("--margin", metavar="PERCENT", default=None,
                     help="share of memory − reserves held back for fragmentation (default: 10 on cuda, 0 on cpu)")
    fit.add_argument("--comm-reserve", metavar="SIZE", default=None,
                     help="with --world-size on cuda: NCCL's buffers on each rank, outside the allocator and not "
                          "measured here (default 1GiB, after NVIDIA/nccl issues #1685 and #864)")
    fit.add_argument("--dtype", choices=MODEL_DTYPES, default="float32")
    fit.add_argument("--amp", action="store_true",
                     help="mixed precision: float32 weights, forward and loss under torch.autocast "
                          "(bfloat16 on the CPU, float16 on CUDA unless --amp-dtype says otherwise)")
    fit.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default=None,
                     help="autocast's dtype for --amp (implies --amp)")
    fit.add_argument("--loss", choices=LOSSES, default="cross_entropy")
    fit.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    fit.add_argument("--explain", action="store_true", help="show what makes up the peak at the solved batch")
    fit.add_argument("--verify", action="store_true",
                     help="build the model and measure the peak at the batch and the next one (cpu budgets on "
                          "the CPU, cuda budgets on the GPU), each in a child process")
    fit.add_argument("--in-process", action="store_true", help="--verify measures in this process")
    distributed(fit)
    fit.set_defaults(run=_fit)
    calibrate = commands.add_parser(
        "calibrate", help="measure this machine's time model again (10-20 s; cached for later predictions)")
    calibrate.add_argument("--threads", type=_positive, default=None,
                           help="CPU threads to calibrate for (default: torch's, which honours OMP_NUM_THREADS)")
    calibrate.set_defaults(run=_calibrate)
    return parser


if __name__ == "__main__":
    run()
