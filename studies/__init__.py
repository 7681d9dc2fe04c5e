"""SE studies on top of the pipeline: gate/placement/ratio ablations and a gate-statistics anomaly score.

The top layer beside :mod:`pipeline`: it may import ``edge_se``, ``quantize``, ``export`` and
``device_bench``; nothing below imports it.
"""
