r"""``make bench-peers``: build edge-se's and the peers' artifacts, time them alternately, write the table.

Runs in the main venv (TensorFlow runs only in ``.venv-peers``, as a subprocess)::

    .venv/bin/python -m benchmarks.peers.run --out artifacts/peers --results results \\
        --peers-python .venv-peers/bin/python [--threads 1,2] [--rounds 3] [--reuse]

Steps: (1) torchvision peers through ExecuTorch and litert-torch, edge-se random weights with the
same BatchNorm scheme (:mod:`benchmarks.peers.torch_peers`); (2) Keras peers through TensorFlow's
converter (:mod:`benchmarks.peers.keras_peers`, in ``.venv-peers``); (3) ``edge-se export ARCH
--format all --dtype all --weights ...`` (:data:`~benchmarks.peers.manifests.EDGE_SE_EXPORT_FLAGS`:
NHWC ``.tflite``, as the Keras peer); (4) a partition report read from every artifact;
(5) every artifact timed with ``device_bench.runner``, alternating, per round and thread count,
then edge-se int8 timed paired (``--paired-with``) against its fp32 and each peer's int8;
(6) every int8 artifact profiled once for the operators its runtime ran
(:mod:`benchmarks.peers.runtime_ops`: a tie where edge-se ran a subsequence of a peer's);
(7) ``results/bench_peers.jsonl`` and ``results/bench_peers.md``. A failed build is recorded in the
table and the run goes on. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.peers import table, timing
from benchmarks.peers.manifests import ARCHS, EDGE_SE_EXPORT_FLAGS, RECIPES, peer_artifact_name
from benchmarks.peers.proc import edge_se_cli, log, run_logged
from contract.formats import artifact_name
from contract.provenance import git_commit


def expected_artifacts(out: Path, archs: list[str]) -> list[dict[str, Any]]:
    """Every artifact the run should produce: ``{key, arch, recipe, format, dtype, artifact, manifest}``."""
    arts = []
    for arch in archs:
        for recipe, fmts in RECIPES.items():
            for fmt in fmts:
                for dtype in ("int8", "fp32"):
                    if recipe == "edge-se":
                        path = out / "edge_se" / artifact_name(arch, fmt, dtype)
                    else:
                        path = out / "peers" / peer_artifact_name(arch, recipe, dtype, fmt)
                    arts.append({"key": table.artifact_key(arch, recipe, fmt, dtype), "arch": arch,
                                 "recipe": recipe, "format": fmt, "dtype": dtype, "artifact": str(path),
                                 "manifest": str(path.with_name(path.name + ".json"))})
    return arts


def build(out: Path, archs: list[str], *, peers_python: str, seed: int, reuse: bool,
          arts: list[dict[str, Any]]) -> dict[str, str]:
    """Build every missing artifact (all, unless ``reuse``); return ``key -> build error``."""
    errors: dict[str, str] = {}

    def todo(recipes: set[str], arch: str) -> bool:
        return not reuse or any(not Path(a["manifest"]).exists() for a in arts
                                if a["arch"] == arch and a["recipe"] in recipes)

    py = sys.executable
    weights = out / "weights"
    if not reuse:  # a build that fails now must not leave an earlier run's file to be timed
        for a in arts:
            if a["arch"] in archs:
                Path(a["artifact"]).unlink(missing_ok=True)
                Path(a["manifest"]).unlink(missing_ok=True)
    for arch in archs:
        need_torch = todo({"executorch", "litert-torch"}, arch)
        need_edge = todo({"edge-se"}, arch)
        wfile = weights / f"{arch}_random_bn.pt"
        if need_torch or (need_edge and not wfile.exists()):
            cmd = [py, "-m", "benchmarks.peers.torch_peers", "--out", str(out / "peers"), "--arch", arch,
                   "--seed", str(seed), "--edge-se-weights", str(weights)]
            if not need_torch:
                cmd.append("--skip-peers")
            rc, recs, last = run_logged(cmd, f"torchvision peers {arch}")
            for r in recs:
                if "error" in r:
                    errors[table.artifact_key(arch, r["recipe"], r["format"], r["dtype"])] = r["error"]
            if rc != 0 and not recs:
                for a in arts:
                    if a["arch"] == arch and a["recipe"] in ("executorch", "litert-torch"):
                        errors[a["key"]] = f"builder failed: {last}"
        if todo({"tf-converter"}, arch):
            if not Path(peers_python).exists():
                msg = f"{peers_python} missing: run `make bench-peers` (it creates .venv-peers)"
                for a in arts:
                    if a["arch"] == arch and a["recipe"] == "tf-converter":
                        errors[a["key"]] = msg
            else:
                rc, recs, last = run_logged([peers_python, "-m", "benchmarks.peers.keras_peers", "--out",
                                       str(out / "peers"), "--arch", arch, "--seed", str(seed)], f"Keras peers {arch}")
                for r in recs:
                    if "error" in r:
                        errors[table.artifact_key(arch, "tf-converter", "tflite", r["dtype"])] = r["error"]
                if rc != 0 and not recs:
                    for a in arts:
                        if a["arch"] == arch and a["recipe"] == "tf-converter":
                            errors[a["key"]] = f"builder failed: {last}"
        if need_edge:
            rc, recs, last = run_logged([edge_se_cli(), "export", arch, "--format", "all", "--dtype", "all",
                                         *EDGE_SE_EXPORT_FLAGS,
                                         "--out", str(out / "edge_se"), "--weights", str(wfile), "--seed", str(seed)],
                                        f"edge-se export {arch}")
            if rc != 0:
                for a in arts:
                    if a["arch"] == arch and a["recipe"] == "edge-se" and not Path(a["manifest"]).exists():
                        errors[a["key"]] = f"edge-se export exit {rc}: {last}"
    return errors


def collect(arts: list[dict[str, Any]], errors: dict[str, str]) -> list[dict[str, Any]]:
    """Attach size, partition report and build error to every expected artifact."""
    from export.partitions import report

    for a in arts:
        a["build_error"] = None
        a["partitions"] = None
        a["size_bytes"] = None
        if not Path(a["manifest"]).exists() or not Path(a["artifact"]).exists():
            a["build_error"] = errors.get(a["key"], "not built (no manifest)")
            continue
        if a["key"] in errors:  # built earlier, failed now: the file on disk is stale
            a["build_error"] = errors[a["key"]]
            continue
        a["size_bytes"] = Path(a["artifact"]).stat().st_size
        try:
            a["partitions"] = report(a["artifact"], a["dtype"])
        except (ValueError, OSError) as exc:
            a["partitions"] = {"error": str(exc)}
    return arts



def write_results(results: Path, arts: list[dict[str, Any]], timings: dict[tuple[str, int], dict[str, Any]],
                  threads: list[int], meta: dict[str, Any],
                  paired: dict[tuple[str, int], dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """Write ``bench_peers.jsonl`` (artifact, paired, comparison and target records) and ``bench_peers.md``."""
    from contract.files import write_text

    paired = paired or {}
    comparisons = table.compare(arts, timings, threads, paired)
    findings = table.target_findings(comparisons, arts)
    lines = [json.dumps({"kind": "meta", **meta})]
    for a in arts:
        for t in threads:
            lines.append(json.dumps({"kind": "artifact", **{k: v for k, v in a.items() if k != "manifest"},
                                     "threads": t, **timings.get((a["key"], t), {})}))
    lines += [json.dumps({"kind": "paired", "pair": key, "threads": t, **v}) for (key, t), v in paired.items()]
    lines += [json.dumps({"kind": "comparison", **c}) for c in comparisons]
    lines += [json.dumps({"kind": "target", **f}) for f in findings]
    jsonl = results / "bench_peers.jsonl"
    write_text(jsonl, "\n".join(lines) + "\n")
    header = [
        "# Peer benchmark: edge-se int8 vs the standard recipes (issue 6)", "",
        f"Run {meta['started']} to {meta['finished']}, commit {meta['commit']}, {_machine_line(meta['machine'])}. "
        f"Batch 1, {meta['resolution']}x{meta['resolution']}, random weights with randomised BatchNorm, generated "
        "calibration images.",
        f"Timing: `device_bench.runner`, {meta['rounds']} rounds, every artifact once per round and thread count "
        f"in the same order (A B C A B C ...), {meta['runner']['runs']}+ runs and >= {meta['runner']['min_seconds']} s "
        f"per timing after {meta['runner']['warmup']} warm-up runs; figure = median of round medians."
        + (_paired_line(meta["paired_runner"]) if meta.get("paired_runner") else ""),
        f"**Noise:** this machine is shared (load average {meta['loadavg_start'][0]:.1f} at the start, "
        f"{meta['loadavg_end'][0]:.1f} at the end, on {meta['machine']['cpu_count']} CPUs): absolute figures are "
        "inflated; `spread_pct` per artifact is in the jsonl.",
    ]
    if meta.get("float_prefix"):
        from benchmarks.peers.float_prefix import header_line

        header.insert(-1, header_line(meta["float_prefix"]))
    spreads = sorted(float(t["spread_pct"]) for t in timings.values() if t.get("spread_pct") is not None)
    if spreads:
        header[-1] += (f" Round medians of one artifact differed by {spreads[len(spreads) // 2]:.0f}% (median over "
                       f"artifacts) and up to {spreads[-1]:.0f}%: only large ratios are meaningful in this run.")
    md = results / "bench_peers.md"
    write_text(md, table.markdown(comparisons, arts, findings, header=header))
    return jsonl, md


def _paired_line(spec: dict[str, Any]) -> str:
    """The header's sentence on the paired timings (``spec``: their MeasureSpec as a dict)."""
    return (" Paired: edge-se int8 against its fp32 and each peer's int8 in one runner process per round "
            f"(`--paired-with`), {spec['repeats']} repeats of >= {spec['min_seconds']} s each, which goes first "
            "alternating; the targets are judged on the median of the repeats' ratios.")


def _machine_line(machine: dict[str, Any]) -> str:
    """The header's machine line; runs recorded before ``cpu_flags`` was kept say the flags were not recorded."""
    from device_bench.sysinfo import system_line

    return system_line({"cpu_flags": "not recorded"} | machine)


def rerender(results: Path) -> tuple[Path, Path]:
    """Rewrite ``bench_peers.{jsonl,md}`` from an existing jsonl (after a change to the table code)."""
    records = [json.loads(ln) for ln in (results / "bench_peers.jsonl").read_text().splitlines() if ln.strip()]
    meta = next(r for r in records if r["kind"] == "meta")
    fields = ("key", "arch", "recipe", "format", "dtype", "artifact", "size_bytes", "partitions", "build_error",
              "runtime_ops", "runtime_ops_error")
    arts: dict[str, dict[str, Any]] = {}
    timings: dict[tuple[str, int], dict[str, Any]] = {}
    paired: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        if r["kind"] == "artifact":
            arts.setdefault(r["key"], {k: r.get(k) for k in fields})
            timings[(r["key"], int(r["threads"]))] = {k: v for k, v in r.items() if k not in fields
                                                       and k not in ("kind", "threads")}
        elif r["kind"] == "paired":
            paired[(r["pair"], int(r["threads"]))] = {k: v for k, v in r.items()
                                                       if k not in ("kind", "pair", "threads")}
    return write_results(results, list(arts.values()), timings, list(meta["threads"]), meta, paired)


def _threads(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be comma-separated integers like 1,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--threads needs counts >= 1, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    """Build, report, time and tabulate; return 0 (failures are results, recorded in the table)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="artifacts/peers", help="artifacts folder (edge_se/, peers/, weights/)")
    p.add_argument("--results", default="results", help="folder for bench_peers.jsonl and bench_peers.md")
    p.add_argument("--arch", action="append", choices=ARCHS, help="architecture (repeatable; default: all)")
    p.add_argument("--peers-python", default=".venv-peers/bin/python", help="interpreter of the TensorFlow env")
    p.add_argument("--threads", type=_threads, default=[1, 2], help="thread counts, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (each artifact once per round)")
    p.add_argument("--runs", type=int, default=timing.PEER_MEASURE.runs, help="minimum timed inferences per timing")
    p.add_argument("--warmup", type=int, default=timing.PEER_MEASURE.warmup, help="untimed inferences per timing")
    p.add_argument("--min-seconds", type=float, default=timing.PEER_MEASURE.min_seconds,
                   help="minimum timed seconds per timing")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, BatchNorm and calibration images")
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=False,
                   help="keep artifacts already built (default: rebuild everything in this run)")
    p.add_argument("--float-prefix", choices=("auto", "none"), default="auto",
                   help="auto: keep edge-se int8's first layers fp32 where this CPU's profiles predict they are faster "
                   "and a paired timing against all-int8 confirms it (benchmarks/peers/float_prefix.py); "
                   "none: all int8")
    p.add_argument("--render-only", action="store_true",
                   help="only rewrite bench_peers.md (and .jsonl) from the existing bench_peers.jsonl")
    args = p.parse_args(argv)
    archs = list(args.arch or ARCHS)
    out, results = Path(args.out), Path(args.results)
    if args.render_only:
        if not (results / "bench_peers.jsonl").is_file():
            p.error(f"--render-only: {results / 'bench_peers.jsonl'} does not exist (run without --render-only first)")
        _, md = rerender(results)
        sys.stdout.write(md.read_text())
        return 0
    started = datetime.datetime.now().isoformat(timespec="seconds")
    arts = expected_artifacts(out, archs)
    errors = build(out, archs, peers_python=args.peers_python, seed=args.seed, reuse=args.reuse, arts=arts)
    chosen: dict[str, Any] = {}
    if args.float_prefix == "auto":
        from benchmarks.peers import float_prefix

        chosen = float_prefix.apply(out, archs, list(RECIPES["edge-se"]), seed=args.seed, resolution=224,
                                    threads=args.threads)
    collect(arts, errors)
    timed = {a["key"]: (a["artifact"], a["manifest"]) for a in arts if a["build_error"] is None}
    spec = timing.PEER_MEASURE.replace(runs=args.runs, warmup=args.warmup, min_seconds=args.min_seconds)
    load_start = os.getloadavg()
    log(f"timing {len(timed)} artifacts x threads {args.threads} x {args.rounds} rounds")
    timings = timing.time_alternating(timed, threads=args.threads, rounds=args.rounds, spec=spec)
    pairs = table.pairs(arts)
    paired_spec = timing.PAIRED_MEASURE.replace(warmup=args.warmup)
    log(f"timing {len(pairs)} pairs x threads {args.threads} x {args.rounds} rounds, paired")
    paired = timing.time_paired({k: (timed[a], timed[b]) for k, (a, b) in pairs.items()}, threads=args.threads,
                                rounds=args.rounds, spec=paired_spec)
    from benchmarks.peers.runtime_ops import profile_int8

    profile_int8(arts, out)  # after the timings: the operators each int8 artifact ran (a tie's evidence)
    from device_bench.sysinfo import system_record

    meta = {"started": started, "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "commit": git_commit(short=True), "machine": system_record(), "loadavg_start": list(load_start),
            "loadavg_end": list(os.getloadavg()), "resolution": 224, "rounds": args.rounds,
            "threads": args.threads, "runner": spec.to_dict(),  # runner: the MeasureSpec (threads: per timing)
            "paired_runner": paired_spec.to_dict(), "float_prefix": chosen}
    jsonl, md = write_results(results, arts, timings, args.threads, meta, paired)
    log(f"wrote {jsonl} and {md}")
    sys.stdout.write(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
