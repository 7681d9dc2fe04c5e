"""Build a latency table on a device: which networks' kernels to probe, measure them, fit (``edge-se latency-table``).

The build set is a few (phi, resolution) points of the family's compound scaling, spread over the
range ``edge-se scale`` searches; every distinct kernel of those networks is probed alone, and the
networks themselves are measured whole for the assembly fit (:mod:`latency.table`). Variants
outside the build set are predicted from the regression; ``make bench-scale`` measures how well on a
held-out set.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contract.provenance import dist_versions, git_commit
from device_bench.sysinfo import system_record
from edge_se.errors import EdgeSeError
from edge_se.families import efficientnet, phi_dropout
from edge_se.latency_key import Kernel, kernels
from edge_se.scaling import compound_coefficients
from edge_se.specs import COMPOUND_ALPHA, COMPOUND_BETA, COMPOUND_GAMMA, ArchSpec, Scale
from latency.measure import Target, export_all, time_all
from latency.table import LatencyTable, build_table

FAMILIES = ("efficientnet",)
"""Families with compound scaling, the ones a table and ``edge-se scale`` cover."""

DEFAULT_BUILD = "-2@128,-1@192,0@160,0@256,1@224,2@288,-1@96"
"""Build set of ``edge-se latency-table``: ``phi@resolution`` points spanning phi -2..2 and 128..288 px."""

VERSIONS = ("torch", "executorch", "ai-edge-litert", "litert-torch", "torchao")


def variant(phi: float, resolution: int, *, width: float = 1.0, depth: float = 1.0,
            family: str = "efficientnet") -> ArchSpec:
    """The compound-scaled network for real ``phi`` at ``resolution``, width/depth optionally off the rule.

    Depth ``alpha**phi * depth``, width ``beta**phi * width`` (the paper's alpha 1.2, beta 1.1); the
    resolution is free (``edge-se scale`` searches it apart from phi). Named
    ``efficientnet_phi{phi}`` (plus ``_w{width}_d{depth}`` off the rule), the registry's name for the
    on-rule network, so ``edge-se export efficientnet_phi1.25 --resolution 240`` rebuilds it.
    """
    check_family(family)
    if not (math.isfinite(phi) and -8 <= phi <= 8):
        raise EdgeSeError(f"phi {phi!r} out of range: need a finite number in [-8, 8]")
    if resolution < 32 or resolution % 8:
        raise EdgeSeError(f"resolution {resolution}: need a multiple of 8 pixels, at least 32")
    d, w, _ = compound_coefficients(phi, COMPOUND_ALPHA, COMPOUND_BETA, COMPOUND_GAMMA)
    name = f"efficientnet_phi{phi:g}"
    if (width, depth) != (1.0, 1.0):
        name += f"_w{width:g}_d{depth:g}"
    return efficientnet(name, Scale(w * width, d * depth, resolution, phi_dropout(phi)), phi=phi)


def check_family(family: str) -> str:
    """``family`` if latency tables cover it, else a one-line error naming those that do."""
    if family not in FAMILIES:
        raise EdgeSeError(f"--family {family!r}: no latency tables for it; compound scaling covers "
                          f"{', '.join(FAMILIES)}")
    return family


def parse_points(text: str, *, flag: str = "--build") -> list[tuple[float, int]]:
    """``"phi@res,phi@res"`` -> ``[(phi, res), ...]``; a bad item is one line naming the flag and the item."""
    points = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        phi_text, sep, res_text = item.partition("@")
        try:
            if not sep:
                raise ValueError
            point = (float(phi_text), int(res_text))
        except ValueError:
            raise EdgeSeError(f"{flag}: bad point {item!r}; expected PHI@RESOLUTION, e.g. -1@192") from None
        points.append(point)
    if not points:
        raise EdgeSeError(f"{flag}: no points given; expected PHI@RESOLUTION[,PHI@RESOLUTION...]")
    return points


def unique_kernels(networks: Sequence[tuple[ArchSpec, int]]) -> list[Kernel]:
    """Every distinct kernel (by key) of the networks, in first-seen order."""
    seen: dict[str, Kernel] = {}
    for spec, res in networks:
        for k in kernels(spec, res):
            seen.setdefault(k.key, k)
    return list(seen.values())


def measure_networks(networks: Sequence[tuple[ArchSpec, int]], target: Target,
                     work: Path) -> list[tuple[float, str, dict[str, Any]]]:
    """Export and time whole networks: ``(value, unit, bench record)`` each."""
    paths = export_all([("network", spec, res) for spec, res in networks], target, work)
    return time_all(paths, target, work)


def provenance(target: Target) -> dict[str, Any]:
    """What decides a table's numbers besides its entries: CPU and flags, versions, spec, runner, commit."""
    return {
        "system": system_record(),
        "versions": dist_versions(VERSIONS),
        "measure": target.measure.to_dict(),
        "runner": target.runner,
        "passes": target.passes,
        "seed": target.seed,
        "commit": git_commit(short=True),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def device_llc_bytes(target: Target, records: Sequence[Mapping[str, Any]]) -> int | None:
    """The timed device's last-level cache in bytes, as its runs reported it; None when unknown.

    Both runners report ``llc_bytes`` (:func:`device_bench.sysinfo.describe` in the Python runner,
    the same sysfs read in the native one); 0, a cache sysfs does not show, is unknown. Only for
    wall-clock tables: instructions per inference do not depend on the cache.
    """
    seen = {int(r["llc_bytes"]) for r in records if isinstance(r.get("llc_bytes"), int) and r["llc_bytes"] > 0}
    if len(seen) > 1:
        raise EdgeSeError(f"device {target.device}: runs report different last-level caches {sorted(seen)}")
    return seen.pop() if seen else None


Timed = list[tuple[float, str, dict[str, Any]]]
"""``(value, unit, bench record)`` per artifact, as :func:`latency.measure.time_all` returns them."""


def refit(table: LatencyTable, points: Sequence[tuple[float, int]]) -> LatencyTable:
    """The table the same measurements give with the build set cut to ``points`` (a subset of its own).

    Only the kernels of those networks and those networks' whole-network values are kept, and the
    regression and assembly are fitted again: a build-set ablation with no second measurement, so a
    change to the build set is judged on the very timings the full table was fitted on.

    Raises:
        EdgeSeError: a point the table was not built with.
    """
    own = {(n["name"], int(n["resolution"])): n for n in table.networks}
    keep = [(variant(phi, res, family=table.family), res) for phi, res in points]
    missing = [f"{spec.name}@{res}" for spec, res in keep if (spec.name, res) not in own]
    if missing:
        raise EdgeSeError(f"refit: {', '.join(missing)} not in the table's build set")
    measured = [(k, table.entries[k.key].value, {"stability": table.entries[k.key].stability,
                                                 "cv_pct": table.entries[k.key].cv_pct})
                for k in unique_kernels(keep)]
    whole = [(spec, res, float(own[(spec.name, res)]["measured"])) for spec, res in keep]
    meta = dict(table.meta) | {"build": [f"{phi:g}@{res}" for phi, res in points], "refit_of": table.meta.get("build")}
    return build_table(device=table.device, fmt=table.format, dtype=table.dtype, threads=table.threads,
                       family=table.family, unit=table.unit, measured=measured, networks=whole, meta=meta,
                       llc_bytes=table.llc_bytes)


def build_latency_table(target: Target, *, family: str, points: Sequence[tuple[float, int]], work: Path,
                        also: Sequence[tuple[ArchSpec, int]] = ()) -> tuple[LatencyTable, Timed]:
    """Probe every kernel of the build set's networks, time the networks whole, fit the table.

    Exports first (``target.jobs`` processes), then all timing in one pass on the device, so no
    export runs beside a timed inference. ``also``: networks timed in the same passes, side by side
    with the table's own artifacts, and returned with the table (``(value, unit, record)`` each)
    but not used to fit it: a held-out check whose measurements share the table's conditions (a
    drift of the machine falls on both alike).
    """
    check_family(family)
    networks = [(variant(phi, res, family=family), res) for phi, res in points]
    ks = unique_kernels(networks)
    items: list[tuple[str, Any, int]] = [("kernel", k, k.size) for k in ks]
    items += [("network", spec, res) for spec, res in networks]
    paths = export_all(items, target, work)
    if also:
        paths += export_all([("network", spec, res) for spec, res in also], target, work / "heldout")
    timed = time_all(paths, target, work)
    units = {unit for _, unit, _ in timed}
    if len(units) != 1:
        raise EdgeSeError(f"device {target.device}: mixed units {sorted(units)} in one table")
    measured = [(k, value, rec) for k, (value, _, rec) in zip(ks, timed, strict=False)]
    n_own = len(ks) + len(networks)
    whole = [(spec, res, value) for (spec, res), (value, _, _) in zip(networks, timed[len(ks):n_own], strict=True)]
    unit = units.pop()
    llc = device_llc_bytes(target, [rec for _, _, rec in timed]) if unit == "ms" else None
    meta = provenance(target) | {"build": [f"{phi:g}@{res}" for phi, res in points]}
    table = build_table(device=target.device, fmt=target.fmt, dtype=target.dtype, threads=target.measure.threads,
                        family=family, unit=unit, measured=measured, networks=whole, meta=meta, llc_bytes=llc)
    return table, timed[n_own:]


__all__ = ["DEFAULT_BUILD", "FAMILIES", "build_latency_table", "check_family", "device_llc_bytes", "measure_networks",
           "parse_points", "provenance", "refit", "unique_kernels", "variant"]
