"""Emulated-aarch64 parity of existing artifacts, no instruction counts: one JSON line per artifact.

``python scripts/emulated_parity.py ARTIFACT...`` runs each artifact once under ``qemu-aarch64``
(``make arm-emu``) and once on the host, and prints ``device_bench.parity``'s verdict (int8 beyond
one output step: ``golden``, the verdict on the artifact's golden inputs). Used on the latency
table's artifacts (``runs/bench_scale/pte_int8``) to check the golden rule on the deep probes that
failed the step rule on 2026-12-05 (README, docs/manifest.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from contract.errors import first_line
from contract.measure import MeasureSpec
from device_bench.transports.base import RunOptions
from device_bench.transports.qemu import QemuTransport


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per artifact: ``artifact``, ``s`` (wall seconds), the parity verdict or ``error``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per runner process")
    args = p.parse_args(argv)
    opts = RunOptions(MeasureSpec(warmup=0, runs=1, min_seconds=0.0, repeats=1, cooldown_s=0.0),
                      timeout_s=args.timeout)
    transport = QemuTransport(count=False)
    failed = 0
    for art in args.artifacts:
        t0 = time.time()
        try:
            p_ = transport.run(art, Path(f"{art}.json"), opts.replace(runner="native" if art.suffix == ".pte"
                                                                       else "python"))["parity"]
            out = {k: p_.get(k) for k in ("passed", "bit_identical", "max_abs_diff")} | {"golden": p_.get("golden")}
            failed += not p_.get("passed")
        except Exception as exc:  # noqa: BLE001  (one line per artifact, the run goes on)
            out = {"error": first_line(exc)}
            failed += 1
        print(json.dumps({"artifact": art.name, "s": round(time.time() - t0, 1)} | out), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
