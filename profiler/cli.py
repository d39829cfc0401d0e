"""``modelsize``: summary (predict), measure, profile (predict + measure + compare + save).

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
_SIZE_OPTIONS = ("--memory", "--reserve", "--margin")
#: the largest batch modelsize accepts: torch indexes many kernels with 32-bit integers
MAX_BATCH = 2 ** 31 - 1


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
    source = _source(args)
    if not args.no_save:
        check_writable(args.results_dir)
    if args.world_size is not None:
        if args.device == "cuda":
            raise ModelsizeError("distributed runs are measured on CPU ranks (gloo) here", field="device",
                                 expected="cpu with --world-size", received="cuda")
        from profiler.distributed.launch import check_world
        check_world(args.world_size)
        result = workflow.distributed(source, _reference(args), **_distributed_options(args), measure=True)
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
    _emit(result, args)
    if "saved_to" in result and args.format != "json":
        print(f"Saved: {result['saved_to']}")
    if unsaved:
        print(f"modelsize: error: {unsaved}", file=sys.stderr)
        return 1
    return 0


def _fit(args: argparse.Namespace) -> int:
    from profiler.planning import fit
    from profiler.report.fit_tables import render_fit
    source = _source(args)
    budget = fit.make_budget(memory=args.memory, device=args.device, target=args.target, reserve=args.reserve,
                             margin=args.margin)
    if args.world_size is not None:
        return _distributed_fit(args, source, budget)
    target = budget.target
    answer = fit.solve(source, budget, mode="inference" if args.inference else args.train, dtype=args.dtype,
                       loss=args.loss, amp=_amp_dtype(args, target), threads=args.threads)
    result = answer.as_dict()
    if args.device and answer.batch:   # the time of a step at the answer, on that card
        result["predicted_time"] = workflow.time_at(source, answer, args.device, threads=args.threads)
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
            "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
            "amp": _amp_dtype(args, kind or "cpu"), "checkpoint": args.checkpoint,
            "input_grad": args.input_grad, "force": args.force, "layer_repeats": args.layer_repeats}


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

    def common(sub: argparse.ArgumentParser, *, spec_optional: bool = False) -> None:
        model(sub, spec_optional=spec_optional)
        sub.add_argument("--batch", type=_batch, default=32, help="batch size (default 32)")
        sub.add_argument("--dtype", choices=MODEL_DTYPES, default="float32")
        sub.add_argument("--loss", choices=LOSSES, default="cross_entropy",
                         help="training-step loss: cross_entropy (integer targets over the last axis, "
                              "every position) or mse")
        sub.add_argument("--optimizers", type=_optimizer_list, default=DEFAULT_OPTIMIZERS,
                         help="training steps to predict and measure, comma-separated among "
                              + ", ".join(OPTIMIZER_CATALOG) + " (default sgd,adam)")
        sub.add_argument("--format", choices=("text", "markdown", "json"), default="text")
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
        sub.add_argument("--warmup", type=int, default=3,
                         help="untimed runs of the forward pass and of each training step first (default 3)")
        sub.add_argument("--repeats", type=_positive, default=20,
                         help="timed runs of the forward pass and of each training step (default 20)")
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
    common(profile, spec_optional=True)
    measuring(profile)
    distributed(profile)
    profile.add_argument("--results-dir", default="results/runs", help="where result JSON files go")
    profile.add_argument("--no-save", action="store_true", help="do not write a result file")
    profile.set_defaults(run=_profile)
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
                     help="share of memory − reserve held back for fragmentation (default: 10 on cuda, 0 on cpu)")
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
        "calibrate", help="measure this machine's time model again (about 10 s; cached for later predictions)")
    calibrate.add_argument("--threads", type=_positive, default=None,
                           help="CPU threads to calibrate for (default: torch's, which honours OMP_NUM_THREADS)")
    calibrate.set_defaults(run=_calibrate)
    return parser


if __name__ == "__main__":
    run()
