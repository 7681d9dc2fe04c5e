"""Latency tables and latency-aware compound scaling, on top of export and device_bench.

``edge_se.latency_key`` cuts a network into kernels (pure); :mod:`latency.measure` builds and times
kernel probes and whole networks on a device; :mod:`latency.table` holds the measured kernels and
the predictor fitted on them; :mod:`latency.search` finds the largest network under a budget;
:mod:`latency.cli` is ``edge-se latency-table`` and ``edge-se scale``.
"""
