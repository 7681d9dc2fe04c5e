"""``edge-se bench``, ``edge-se bench-torch`` and ``edge-se devices``.

Results go to ``--out`` as JSON lines (appended atomically) and to stdout; logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from contract.measure import DEFAULT as DEFAULT_MEASURE
from contract.measure import DEFAULT_ORDER, ORDERS, from_namespace
from contract.measure import add_arguments as add_measure_arguments
from edge_se.argtypes import number
from edge_se.cliargs import deprecated
from edge_se.errors import EdgeSeError

DTYPES = ("fp32", "fp16", "bf16")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench``, ``bench-torch`` and ``devices`` to the ``edge-se`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    b = subparsers.add_parser("bench", help="time exported artifacts on a device", formatter_class=fmt)
    b.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".pte/.tflite files (manifest beside each)")
    b.add_argument(
        "--device",
        action="append",
        default=None,
        help="local, qemu-aarch64, ssh://[user@]host[:port], adb://SERIAL or an inventory name "
        "(repeat for several; default local)",
    )
    b.add_argument("--out", required=True, type=Path, help="JSON-lines file to append to")
    measure = b.add_argument_group("measurement (contract.measure.MeasureSpec)")
    bench_threads = add_measure_arguments(measure)["threads"]
    bench_threads.default = None  # None: the inventory's threads for the device, else the spec's
    bench_threads.help = f"runtime threads (default: the inventory's, else {DEFAULT_MEASURE.threads})"
    b.add_argument(
        "--order",
        choices=ORDERS,
        default=DEFAULT_ORDER,
        help="order of the artifacts on each device: shuffled with --seed (a drift of the machine then falls on "
        "no artifact in particular) or as given; recorded as order_mode, order and order_index",
    )
    b.add_argument(
        "--runner",
        choices=("auto", "python", "native"),
        default="auto",
        help=".pte runner where both exist (auto: Python runtime if importable)",
    )
    b.add_argument(
        "--timeout", type=number("--timeout", float), default=600.0, help="seconds allowed per device command"
    )
    b.add_argument(
        "--parity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare emulated outputs with the host's (qemu-aarch64)",
    )
    b.add_argument("--inventory", type=Path, default=None, help="device inventory TOML")
    b.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after timing, profile each artifact per operator (.pte: ExecuTorch ETDump with XNNPACK's operator "
        "times; .tflite: LiteRT's profiler through libLiteRt.so's C API) into OUT's stem + .profile.jsonl",
    )
    b.set_defaults(func=run_bench)

    t = subparsers.add_parser("bench-torch", help="desktop PyTorch baselines (CPU, CUDA)", formatter_class=fmt)
    t.add_argument("model", help="edge-se registry name")
    torch_device = t.add_argument("--torch-device", choices=("cpu", "cuda"), default="cpu",
                                  help="where PyTorch runs (edge-se bench's --device is a transport)")
    deprecated(t, "--device", torch_device)
    t.add_argument(
        "--dtype",
        choices=DTYPES,
        action="append",
        default=None,
        help="repeat for several (default: fp32 on cpu; fp32, fp16, bf16 on cuda)",
    )
    t.add_argument(
        "--batch",
        type=number("--batch", int),
        action="append",
        default=None,
        help="repeat for several (default: 1 on cpu; 1 and 32 on cuda)",
    )
    t.add_argument("--resolution", type=number("--resolution", int), default=None, help="default: the model's spec")
    t.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="also time torch.compile where it works"
    )
    t.add_argument("--without-cuda", choices=("cpu", "skip"), default="cpu",
                   help="--torch-device cuda where there is no CUDA: time the CPU instead, or record one skip")
    t.add_argument("--warm-only", action="store_true",
                   help="only compile each configuration and make its first call, filling the inductor cache "
                   "(TORCHINDUCTOR_CACHE_DIR) for a later timing run; time nothing, write no --out; one JSON line "
                   "per configuration with the first call's ms and the FX graph cache's hits and misses")
    add_measure_arguments(t.add_argument_group("measurement (contract.measure.MeasureSpec)"))
    t.add_argument("--out", type=Path, help="bench records (JSON lines) appended here; required unless --warm-only")
    t.set_defaults(func=run_bench_torch)

    d = subparsers.add_parser("devices", help="list inventory devices and probe them", formatter_class=fmt)
    d.add_argument("--inventory", type=Path, default=None, help="device inventory TOML")
    d.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True, help="contact each device")
    d.set_defaults(func=run_devices)


def run_bench(args: argparse.Namespace) -> int:
    """``edge-se bench``: run, append, print one line per record; exit 1 if any run failed."""
    from device_bench import inventory
    from device_bench.bench import bench
    from device_bench.transports.base import RunOptions

    threads_given = args.measure_threads is not None
    if not threads_given:
        args.measure_threads = DEFAULT_MEASURE.threads
    opts = RunOptions(measure=from_namespace(args), runner=args.runner, timeout_s=args.timeout, parity=args.parity)
    devices = args.device or ["local"]
    threads = None if threads_given else f"threads from the inventory, else {opts.measure.threads}"
    order = f"order {args.order}" + (f" (seed {opts.measure.seed})" if args.order == "shuffled" else "")
    print(f"bench: {len(args.artifacts)} artifact(s) x {devices}: {opts.measure.summary(threads=threads)}; "
          f"runner {opts.runner}, time-out {opts.timeout_s:g} s, {order}", file=sys.stderr)
    records = bench(args.artifacts, devices, inventory.load(args.inventory), opts, args.out,
                    threads_given=threads_given, order=args.order, profile=args.profile)
    for rec in records:
        print(json.dumps(rec, sort_keys=True))
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


def run_bench_torch(args: argparse.Namespace) -> int:
    """``edge-se bench-torch``: PyTorch eager/compiled baselines, one line per configuration."""
    from device_bench.torch_baseline import TorchBenchConfig, bench_torch, warm_compile

    if args.out is None and not args.warm_only:
        raise EdgeSeError("--out is required (unless --warm-only)")
    cfg = TorchBenchConfig(
        model=args.model,
        device=args.torch_device,
        dtypes=tuple(args.dtype or ()),
        batches=tuple(args.batch or ()),
        resolution=args.resolution,
        compile=args.compile,
        measure=from_namespace(args),
        without_cuda=args.without_cuda,
    )
    if args.warm_only:
        for warm in warm_compile(cfg):  # a failing compile is recorded, as bench-torch records it
            print(json.dumps(warm, sort_keys=True))
        return 0
    print(f"bench-torch: {cfg.model} on {cfg.device}: {cfg.measure.summary()}", file=sys.stderr)
    for rec in bench_torch(cfg, args.out):
        print(json.dumps(rec, sort_keys=True))
    return 0


def run_devices(args: argparse.Namespace) -> int:
    """``edge-se devices``: one JSON line per inventory device, probed unless ``--no-probe``."""
    from device_bench import inventory
    from device_bench.transports import from_url
    from device_bench.transports.base import DeviceError

    devices = inventory.load(args.inventory)
    if not devices:
        where = args.inventory or inventory.default_path() or "devices.toml / ~/.config/edge-se/devices.toml"
        print(f"devices: no devices in {where}", file=sys.stderr)
    for name, dev in devices.items():
        rec: dict[str, Any] = {
            "name": name,
            "transport": dev.transport,
            "threads": dev.threads,
            "runtimes": list(dev.runtimes),
        }
        if args.probe:
            try:
                rec["probe"] = from_url(dev.transport, name=name, options=dev.options).probe()
            except DeviceError as exc:
                rec["probe"] = {"reachable": False, "error": str(exc)}
        print(json.dumps(rec, sort_keys=True))
    return 0
