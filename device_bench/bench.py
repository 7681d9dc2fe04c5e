"""Benchmark artifacts on devices and append one JSON line per artifact and device.

Every line is appended atomically as soon as its run ends (``contract.files.append_line``), so
a crash, a time-out or a failing device never loses earlier lines. A run that fails still
leaves a line, with ``status: "error"`` and the one-line reason: failures are recorded, not
hidden. Every line is a flat ``edge-se/bench/2`` record (:mod:`contract.bench`), validated before
it is written.

On each device the artifacts are timed in :func:`contract.measure.timing_order` (``order``:
shuffled with ``measure.seed`` by default, or as given), so a drift of the machine does not
always penalise the same artifact; every record says so in ``order_mode``, ``order`` (the
artifacts in the order timed) and ``order_index`` (its place in it). The file gets the lines in
timing order; :func:`bench` returns them in the given order.

``profile=True`` (``edge-se bench --profile``): each run also records the runtime's per-operator
trace and one profile line (:mod:`device_bench.op_profile`) is appended to ``OUT.profile.jsonl``
beside the bench file, with ``status: unavailable`` and why where the runtime or the transport
has no profiler. The timed figures are taken before profiling and are not changed by it.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import bench as record
from contract.files import append_line, sha256_file
from contract.measure import DEFAULT_ORDER, timing_order
from contract.provenance import git_commit
from device_bench import op_profile
from device_bench.inventory import Device
from device_bench.manifest import Manifest, ManifestError, load_manifest, verify_artifact
from device_bench.transports import resolve
from device_bench.transports.base import DeviceError, RunOptions, Transport
from edge_se.errors import EdgeSeError


@dataclass(frozen=True)
class Job:
    """One artifact with its manifest, checked on the host before anything is sent anywhere."""

    artifact: Path
    manifest_path: Path
    manifest: Manifest


def manifest_for(artifact: Path) -> Path:
    """The manifest beside an artifact: ``NAME.EXT.json`` (docs/manifest.md)."""
    return artifact.with_name(artifact.name + ".json")


def prepare(artifacts: Sequence[str | Path]) -> list[Job]:
    """Check every artifact and its manifest exist and agree; raise naming the first bad one."""
    jobs = []
    for a in artifacts:
        path = Path(a)
        if not path.is_file():
            raise EdgeSeError(f"{path}: artifact not found")
        mpath = manifest_for(path)
        try:
            manifest = load_manifest(mpath)
            verify_artifact(path, manifest)
        except ManifestError as exc:
            raise EdgeSeError(str(exc)) from None
        jobs.append(Job(path, mpath, manifest))
    return jobs



def _context(job: Job, transport: Transport, opts: RunOptions) -> dict[str, Any]:
    m = job.manifest.raw
    return {
        "schema": record.SCHEMA,
        "artifact": str(job.artifact),
        "manifest_sha256": job.manifest.sha256,
        "manifest_file_sha256": sha256_file(job.manifest_path),
        "model": m.get("model"),
        "backend": m.get("backend"),
        "dtype": m.get("dtype"),
        "format": job.manifest.format,
        "resolution": m.get("resolution"),
        "device": transport.name,
        "transport": transport.kind,
        "emulated": transport.emulated,
        "measure": opts.measure.to_dict(),
        "repeats_requested": opts.measure.repeats,
        "cooldown_s": opts.measure.cooldown_s,
        "commit": git_commit(),
        "timestamp_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def options_for(base: RunOptions, device: Device | None, threads_given: bool) -> RunOptions:
    """Run options for one device: the inventory's threads/runner/time-out unless given on the command line."""
    if device is None:
        return base
    changes: dict[str, Any] = {}
    if device.threads is not None and not threads_given:
        changes["threads"] = device.threads
    for key in ("runner", "timeout_s"):
        if key in device.options:
            changes[key] = device.options[key]
    return base.replace(**changes) if changes else base


def bench(artifacts: Sequence[str | Path], devices: Sequence[str], inventory: dict[str, Device], opts: RunOptions,
          out: Path, *, threads_given: bool = False, order: str = DEFAULT_ORDER,
          order_seed: int | None = None, profile: bool = False) -> list[dict[str, Any]]:
    """Run every artifact on every device; append and return one record each.

    On each device the artifacts run in ``timing_order(len(artifacts), order=order,
    seed=order_seed)`` (``order_seed`` None: the device's ``measure.seed``; a caller timing several
    passes gives each its own) and each line is appended as its run ends; the records are returned
    device by device in the order ``artifacts`` were given (whatever order they ran in).
    Bad input (a missing artifact, a bad manifest, an unknown device, an unknown ``order``)
    raises before any run. A device failure is recorded as a ``status: "error"`` line and the loop
    goes on.
    """
    timing_order(0, order=order)  # an unknown order: one line before anything is checked or run
    jobs = prepare(artifacts)
    targets = [resolve(d, inventory) for d in devices]
    records = []
    for transport, entry in targets:
        dev_opts = options_for(opts, entry, threads_given)
        sequence = timing_order(len(jobs), order=order,
                                seed=dev_opts.measure.seed if order_seed is None else order_seed)
        timed = [str(jobs[i].artifact) for i in sequence]
        by_job: dict[int, dict[str, Any]] = {}
        for position, index in enumerate(sequence):
            job = jobs[index]
            ctx = {**_context(job, transport, dev_opts), "order_mode": order, "order": list(timed),
                   "order_index": position}
            if entry is not None and job.manifest.format == "pte" and "executorch" not in entry.runtimes \
                    or entry is not None and job.manifest.format == "tflite" and "tflite" not in entry.runtimes:
                rec = {**ctx, "status": "skipped", "reason": f"inventory lists runtimes {list(entry.runtimes)}"}
            else:
                no_profile = op_profile.unavailable_reason(job.manifest.format, transport.kind)
                extra = {} if not profile or no_profile else \
                    {"etdump": op_profile.etdump_path(out, job.artifact, transport.name)}
                try:
                    # A runner from an older checkout (edge-se/bench/1, on a board) is upgraded here;
                    # output that breaks the contract is this device's error.
                    result = record.read_record(transport.run(job.artifact, job.manifest_path, dev_opts, **extra),
                                                f"{transport.name}: runner output")
                    rec = {**result, **ctx, "status": "ok"}
                    if rec.get("parity") and not rec["parity"]["passed"]:
                        rec["status"] = "parity-failed"
                except (DeviceError, ManifestError) as exc:  # ManifestError is contract.ContractError
                    rec = {**ctx, "status": "error", "error": str(exc)}
            if profile:
                rec["profile_file"] = str(_write_profile(out, job, rec, no_profile))
            record.append(out, rec)
            by_job[index] = rec
            _log(rec)
        records += [by_job[i] for i in range(len(jobs))]
    return records


def _write_profile(out: Path, job: Job, rec: dict[str, Any], unavailable: str | None) -> Path:
    """Append one profile line for a run (``status`` ok, unavailable or error) and return the file."""
    keys = ("artifact", "model", "dtype", "format", "resolution", "device", "commit", "timestamp_utc")
    head: dict[str, Any] = {"schema": op_profile.SCHEMA, **{k: rec.get(k) for k in keys}}
    if unavailable:
        line = {**head, "status": "unavailable", "reason": unavailable}
    elif rec["status"] not in ("ok", "parity-failed"):
        line = {**head, "status": "error", "error": f"the run failed: {rec.get('error') or rec.get('reason')}"}
    else:
        try:
            line = {**head, **op_profile.profile_from_run(job.manifest.raw, rec)}
        except EdgeSeError as exc:
            line = {**head, "status": "error", "error": str(exc)}
    path = op_profile.profile_path(out)
    append_line(path, json.dumps(line, sort_keys=True))
    if line["status"] == "ok":
        said = op_profile.sentence(line) or "SE not matched"
        print(f"bench: {Path(job.artifact).name}: profile: per-op sum {line['per_op_sum_ms']:.4g} ms = "
              f"{line['sum_to_end_to_end']:.3f} x end to end; {said}", file=sys.stderr)
    else:
        print(f"bench: {Path(job.artifact).name}: profile {line['status']}: "
              f"{line.get('reason') or line.get('error')}", file=sys.stderr)
    return path


def _log(rec: dict[str, Any]) -> None:
    rec = record.read_record(rec)
    where = f"{Path(rec['artifact']).name} on {rec['device']}"
    if rec["status"] == "ok":
        p50 = f"{rec['p50_ms']:.4g}" if rec.get("p50_ms") is not None else "n/a"
        note = " (emulated)" if rec.get("emulated") else ""
        ipi = rec.get("instructions_per_inference")
        extra = f", {ipi:.4g} instr/inference" if ipi else ""
        flag = " UNSTABLE" if rec.get("unstable") else " NOISY" if rec.get("stability") == "noisy" else ""
        print(f"bench: {where}: p50 {p50} ms{note}{extra}{flag}", file=sys.stderr)
    elif rec["status"] == "parity-failed":
        print(f"bench: {where}: outputs disagree with the host ({rec['parity']['rule']}, "
              f"max abs diff {rec['parity']['max_abs_diff']})", file=sys.stderr)
    else:
        print(f"bench: {where}: {rec['status']}: {rec.get('error') or rec.get('reason')}", file=sys.stderr)
