"""The pipeline: sweeps over models x dtypes x policies x formats x devices, and the report.

The top layer: it drives the other packages through their CLI contracts (``edge-se train``,
``quantize``, ``export``, ``bench``, ``bench-torch``) and imports only ``edge_se`` itself.
"""
