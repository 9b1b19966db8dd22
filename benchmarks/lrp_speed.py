"""Speed and memory of spray's LRP engine against the plain input gradient (and zennit when installed).

    .venv/bin/python benchmarks/lrp_speed.py [--repeats 3] [--json results.json] [--cases vgg16,resnet50,demo]
        [--compile] [--nchw] [--no-rss] [--clock wall|cpu]

spray runs as configured by default (``LRP(channels_last="auto")``: channels-last on CPU for nets with 2-D
convolutions). ``--compile`` adds spray with its element-wise steps compiled (``spray.lrp.fused``, as with
``SPRAY_LRP_COMPILE=1``) to every round, reported as ``compiled x grad``; its compile time falls in the
warm-up call, not in the timed rounds. ``--nchw`` adds spray in the NCHW memory format
(``LRP(channels_last=False)``, ``attribution.channels_last: false``), reported as ``NCHW x grad``.

Cases (issue 3): a VGG-16-shaped net at 224x224 (batch 8), a ResNet-50-shaped net at 224x224 (batch 8),
the demo-sized CNN at 32x32 (batch 256); composites epsilon_plus_flat, epsilon_gamma_box,
epsilon_alpha2_beta1. Every method of a case is timed once per round, rounds interleaved, so that
background load hits all of them alike; images/s come from the median time, ratios are the median over
rounds of the within-round ratio to the gradient (or zennit). The gradient is the floor: one forward and one backward pass for the input gradient
only (parameters frozen), seeded like LRP with one-hot * logit. It is timed in both memory formats (NCHW and,
for nets with 2-D convolutions, channels-last) and the faster one, by median time, is the baseline of every
``x grad`` ratio (``grad fmt`` names it), so that spray's own choice of format does not flatter its ratios;
``x NCHW grad`` is the ratio to the NCHW gradient.

Memory, two figures:

- ``rss_extra_mb`` / ``rss_vs_gradient``: the extra peak resident memory of one call, each method in a fresh
  process of its own (model and input built, the peak counter reset through ``/proc/self/clear_refs``,
  one call, ``VmHWM`` minus the resident memory before it). This counts everything the call allocates:
  the tensors autograd saves and the temporaries the rules create in the backward pass. It is what a
  user's machine feels. Linux only; on CUDA the peak allocated memory of the call
  (``torch.cuda.max_memory_allocated``) instead.
- ``saved_vs_gradient``: the bytes autograd holds for the backward pass (tensors saved in the forward
  pass), which is what grows with batch size and depth, as a ratio to the gradient's. zennit keeps its
  tensors outside autograd's saved tensors, so its figure is not reported.

``--clock cpu`` times each call by the CPU time of this process (all its threads) instead of the wall
clock: on a machine shared with other jobs the wall clock also counts the time a thread waited for a
core, which the within-round ratios cancel only in part; CPU time counts the work done (with
``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep and add nothing). CPU only.

Set ``OMP_WAIT_POLICY=PASSIVE`` (done below if unset): on two shared cores OpenMP busy-waiting can
slow torch several-fold when another process holds a core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "lrp")]

import nets  # noqa: E402  (the plain-torch test architectures)
from _memory import peak_rss_mb, rss_mb  # noqa: E402

from spray.lrp import LRP  # noqa: E402
from spray.lrp.fused import enable_compile  # noqa: E402

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")
LOW, HIGH = -2.2, 2.7  # z^B bounds of ImageNet-normalised inputs (roughly)


def build_case(name: str, quick: bool) -> tuple[nn.Module, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    model: nn.Module
    if name == "vgg16":
        model, shape = nets.VGG16(classes=1000), (8, 3, 224, 224)
        if quick:
            model, shape = nets.VGG16(width=0.25, classes=1000, hidden=1024), (2, 3, 64, 64)
    elif name == "resnet50":
        model, shape = nets.resnet50(classes=1000), (8, 3, 224, 224)
        if quick:
            model, shape = nets.resnet50(width=0.25, classes=1000), (2, 3, 64, 64)
    elif name == "demo":
        model, shape = nets.DemoCNN(classes=10, batchnorm=True), (256, 1, 32, 32)
        if quick:
            shape = (32, 1, 32, 32)
    else:
        raise SystemExit(f"unknown case {name!r}; expected vgg16, resnet50 or demo")
    model = nets.randomize_batchnorm(nets.init_weights(model)).eval()
    return model, torch.randn(shape, generator=generator)


def gradient_method(model: nn.Module, channels_last: bool = False
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The plain input gradient of ``model`` (a frozen copy), in the channels-last memory format (weights and
    a 4-D input) with ``channels_last``, else as given."""
    import copy

    frozen = copy.deepcopy(model).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        frozen = cast(Any, frozen).to(memory_format=memory_format)  # torch's stubs omit this keyword

    def run(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        inputs = (x.detach().contiguous(memory_format=memory_format) if x.ndim == 4 else x.detach())
        inputs.requires_grad_(True)
        output = frozen(inputs)
        seed = torch.zeros_like(output).scatter_(1, targets[:, None], output.gather(1, targets[:, None]).detach())
        (grad,) = torch.autograd.grad(output, inputs, seed)
        return grad

    run.frozen = frozen  # type: ignore[attr-defined]
    return run


def zennit_method(model: nn.Module, composite: str) -> Callable | None:
    try:
        import zennit.composites as zc
        from zennit.canonizers import SequentialMergeBatchNorm
    except ImportError:
        return None
    import copy

    private = copy.deepcopy(model).eval()
    for param in private.parameters():
        param.requires_grad_(False)
    classes = {
        "epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]),
        "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(low=LOW, high=HIGH, canonizers=[SequentialMergeBatchNorm()]),
        "epsilon_alpha2_beta1": lambda: zc.EpsilonAlpha2Beta1(canonizers=[SequentialMergeBatchNorm()]),
    }
    composite_object = classes[composite]()

    def run(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with composite_object.context(private) as modified:
            inputs = x.detach().requires_grad_(True)
            output = modified(inputs)
            seed = torch.zeros_like(output).scatter_(1, targets[:, None], output.gather(1, targets[:, None]).detach())
            (grad,) = torch.autograd.grad(output, inputs, seed)
        return grad

    run.frozen = private  # type: ignore[attr-defined]
    return run


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(fn: Callable, x: torch.Tensor, targets: torch.Tensor, weights: set[int],
            clock: Callable[[], float] = time.perf_counter) -> tuple[float, int]:
    """Seconds of one call by ``clock``, and its memory figure (see the module docstring). ``weights``:
    data pointers of the model's parameters, which autograd saves by reference (no extra memory)."""
    saved = [0]

    def pack(tensor: torch.Tensor):
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = clock()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, targets)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        memory = torch.cuda.max_memory_allocated() - before
    else:
        memory = saved[0]
    return clock() - start, memory


def compiled_method(engine: LRP) -> Callable[[torch.Tensor, torch.Tensor], tuple]:
    """``engine`` with the rules' element-wise steps compiled (spray.lrp.fused), only during its calls."""

    def run(x: torch.Tensor, targets: torch.Tensor) -> tuple:
        enable_compile(True)
        try:
            return engine(x, targets)
        finally:
            enable_compile(False)

    run._module = engine._module  # type: ignore[attr-defined]
    return run


GRADIENTS = ("gradient", "gradient+nhwc")  # the plain gradient in NCHW and in channels-last


def build_methods(model: nn.Module, composites: tuple[str, ...], zennit: bool = True,
                  compiled: bool = False, nchw: bool = False, gradients: tuple[str, ...] = GRADIENTS
                  ) -> dict[str, Callable]:
    """``{"gradient": ..., "gradient+nhwc": ..., "spray:<composite>": ..., "zennit:<composite>": ...}``
    (``"gradient+nhwc"`` for nets with 2-D convolutions; zennit when installed; ``"spray+compile:<composite>"``
    with ``compiled``, ``"spray+nchw:<composite>"`` with ``nchw``). spray runs with its default settings."""
    methods: dict[str, Callable] = {}
    if "gradient" in gradients:
        methods["gradient"] = gradient_method(model)
    if "gradient+nhwc" in gradients and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        methods["gradient+nhwc"] = gradient_method(model, channels_last=True)
    for composite in composites:
        low_high: dict[str, Any] = {"low": LOW, "high": HIGH} if composite == "epsilon_gamma_box" else {}
        methods[f"spray:{composite}"] = LRP(model, composite, **low_high)
        if compiled:
            methods[f"spray+compile:{composite}"] = compiled_method(LRP(model, composite, **low_high))
        if nchw:
            methods[f"spray+nchw:{composite}"] = LRP(model, composite, channels_last=False, **low_high)
        z = zennit_method(model, composite) if zennit else None
        if z is not None:
            methods[f"zennit:{composite}"] = z
    return methods


def rss_child(case: str, method: str, quick: bool) -> None:
    """In a fresh process: the extra peak resident memory (MB) of one call of ``method``, printed as JSON."""
    model, x = build_case(case, quick)
    composite = method.split(":", 1)[1] if ":" in method else None
    methods = build_methods(model, (composite,) if composite else (), zennit=method.startswith("zennit:"),
                            compiled=method.startswith("spray+compile:"), nchw=method.startswith("spray+nchw:"),
                            gradients=(method,) if method in GRADIENTS else ())
    fn = methods[method]
    targets = torch.zeros(x.shape[0], dtype=torch.long)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident memory
    before = rss_mb()
    fn(x, targets)
    print(json.dumps({"extra_mb": peak_rss_mb() - before}))


def rss_extra_mb(case: str, method: str, quick: bool, threads: int | None) -> float | None:
    """Run :func:`rss_child` in a subprocess; None where the platform cannot report peak memory."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    command = [sys.executable, __file__, "--rss-child", f"{case}|{method}"]
    command += ["--quick"] if quick else []
    command += ["--threads", str(threads)] if threads else []
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["extra_mb"])


def run_case(
    name: str, composites: tuple[str, ...], repeats: int, device: torch.device, quick: bool,
    threads: int | None = None, compiled: bool = False, rss_wanted: bool = True, nchw: bool = False,
    clock: str = "wall",
) -> list[dict]:
    model, x = build_case(name, quick)
    x = x.to(device)
    model = model.to(device)
    targets = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    methods = build_methods(model, composites, compiled=compiled, nchw=nchw)
    for fn in methods.values():  # warm-up: allocator, kernels, first-call checks
        fn(x, targets)
    # Parameters (of every copy) are saved by reference: not counted as memory held for the backward.
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for fn in methods.values():
        module = getattr(fn, "_module", None) or getattr(fn, "frozen", None)
        if module is not None:
            weights |= {p.untyped_storage().data_ptr() for p in module.parameters()}
    times: dict[str, list[float]] = {key: [] for key in methods}
    memory: dict[str, int] = {}
    for _ in range(repeats):
        for key, fn in methods.items():
            seconds, mem = measure(fn, x, targets, weights, CLOCKS[clock])
            times[key].append(seconds)
            memory[key] = max(memory.get(key, 0), mem)
    median = {key: statistics.median(values) for key, values in times.items()}
    # The baseline: the gradient in its faster memory format on this machine and run.
    gradient = min((key for key in GRADIENTS if key in median), key=median.__getitem__)
    rss: dict[str, float | None] = {}
    if device.type == "cpu" and rss_wanted:
        del methods  # the children's memory is their own; free this process's copies first
        for key in [gradient] + [f"spray:{c}" for c in composites]:
            rss[key] = rss_extra_mb(name, key, quick, threads)
    elif device.type != "cpu":  # on CUDA the peak allocated memory of the call is the figure that matters
        rss = {key: value / 2**20 for key, value in memory.items()}

    def ratio(key: str, reference: str) -> float | None:
        # Median over rounds of the within-round ratio: load that drifts between rounds cancels.
        if key not in times or reference not in times:
            return None
        return statistics.median(a / b for a, b in zip(times[key], times[reference]))

    rows = []
    for composite in composites:
        key = f"spray:{composite}"
        zennit_key = f"zennit:{composite}"
        key_rss, gradient_rss = rss.get(key), rss.get(gradient)
        rows.append({
            "model": name,
            "composite": composite,
            "batch": int(x.shape[0]),
            "input": list(x.shape[1:]),
            "device": str(device),
            "images_per_s": x.shape[0] / median[key],
            "gradient_images_per_s": x.shape[0] / median[gradient],
            "gradient_format": "NHWC" if gradient == "gradient+nhwc" else "NCHW",
            "time_vs_gradient": ratio(key, gradient),
            "time_vs_nchw_gradient": ratio(key, "gradient"),
            "time_vs_zennit": ratio(key, zennit_key),
            "compiled_time_vs_gradient": ratio(f"spray+compile:{composite}", gradient),
            "nchw_time_vs_gradient": ratio(f"spray+nchw:{composite}", gradient),
            "zennit_time_vs_gradient": ratio(zennit_key, gradient),
            "saved_vs_gradient": memory[key] / max(memory[gradient], 1),
            "rss_extra_mb": rss.get(key),
            "gradient_rss_extra_mb": rss.get(gradient),
            "rss_vs_gradient": key_rss / gradient_rss if key_rss is not None and gradient_rss else None,
            "repeats": repeats,
            "clock": clock,
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="vgg16,resnet50,demo")
    parser.add_argument("--composites", default=",".join(COMPOSITES))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per case (medians reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small inputs: a smoke test of the script")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--compile", action="store_true",
                        help="also time spray with compiled element-wise kernels (spray.lrp.fused)")
    parser.add_argument("--nchw", action="store_true",
                        help="also time spray in the NCHW memory format (LRP(channels_last=False))")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time calls by the wall clock or by this process's CPU time (CPU only)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-resident-memory subprocesses")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # "case|method": internal
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        case, method = args.rss_child.split("|")
        rss_child(case, method, args.quick)
        return
    composites = tuple(c for c in args.composites.split(",") if c)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu times CPU work only; use the wall clock on an accelerator")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, repeats {args.repeats}, "
          f"{args.clock} clock")
    header = (
        f"{'model':10s} {'composite':22s} {'img/s':>8s} {'grad img/s':>10s} {'grad fmt':>8s} {'x grad':>7s} "
        f"{'x NCHW grad':>11s} {'x zennit':>9s} {'zennit x grad':>13s} {'saved x grad':>12s} {'peak MB':>8s} "
        f"{'grad MB':>8s} {'peak x grad':>11s} {'compiled x grad':>15s} {'NCHW x grad':>11s}"
    )
    print(header)
    rows: list[dict] = []
    for case in [c for c in args.cases.split(",") if c]:
        for row in run_case(case, composites, args.repeats, device, args.quick, args.threads, args.compile,
                            not args.no_rss, args.nchw, args.clock):
            rows.append(row)
            vs_zennit = f"{row['time_vs_zennit']:.2f}" if row["time_vs_zennit"] is not None else "-"
            zennit_grad = f"{row['zennit_time_vs_gradient']:.2f}" if row["zennit_time_vs_gradient"] is not None else "-"
            print(
                f"{row['model']:10s} {row['composite']:22s} {row['images_per_s']:8.2f} "
                f"{row['gradient_images_per_s']:10.2f} {row['gradient_format']:>8s} {row['time_vs_gradient']:7.2f} "
                f"{row['time_vs_nchw_gradient']:11.2f} {vs_zennit:>9s} "
                f"{zennit_grad:>13s} {row['saved_vs_gradient']:12.2f} {_fmt(row['rss_extra_mb'], 8, 0)} "
                f"{_fmt(row['gradient_rss_extra_mb'], 8, 0)} {_fmt(row['rss_vs_gradient'], 11, 2)} "
                f"{_fmt(row['compiled_time_vs_gradient'], 15, 2)} {_fmt(row['nchw_time_vs_gradient'], 11, 2)}",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps({"cases": rows}, indent=2))
        print(f"wrote {args.json}")


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}s}"


if __name__ == "__main__":
    main()
