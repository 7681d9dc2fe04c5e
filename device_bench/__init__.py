"""Trustworthy latency for exported edge-se artifacts, measured where they will run.

The on-device part (``runner``, ``stats``, ``manifest``, ``sysinfo``, ``runtimes``) needs only
numpy and a runtime; the host part (``bench``, ``transports``, ``inventory``, ``torch_baseline``,
``cli``) moves artifacts to a device, runs the runner there and appends one JSON line per
artifact and device::

    $ edge-se bench m_xnnpack_int8.pte --device local --runs 50 --out results/bench.jsonl
    {"schema": "edge-se/bench/2", "artifact": "m_xnnpack_int8.pte", "device": "local", "p50_ms": 0.41, ...}

Every line is a flat ``edge-se/bench/2`` record (:mod:`contract.bench`, docs/manifest.md) measured
by a :class:`contract.measure.MeasureSpec`, recorded with it as ``measure``.

Devices: ``local``, ``qemu-aarch64`` (emulated; see ``make arm-emu``), ``ssh://[user@]host[:port]``,
``adb://SERIAL`` or a name from the device inventory (``edge-se devices``).
"""
