"""The artifact and measurement contract: what every stage writes and reads, with no torch.

One definition each of: the manifest (:mod:`contract.manifest`, schema file
``manifest.schema.json``), the bench record (:mod:`contract.bench`, schema file
``bench.schema.json``), the formats and artifact
naming (:mod:`contract.formats`), the measurement spec (:mod:`contract.measure`), atomic writes
and checksums (:mod:`contract.files`). Standard library only, so the on-device runner (numpy and a
runtime, on a Raspberry Pi) shares it with the host side; ``edge_se``, ``export``,
``device_bench`` and ``pipeline`` all import it, it imports none of them.

Example:
    >>> from contract.formats import artifact_name
    >>> artifact_name("efficientnet_b0", "pte", "int8")
    'efficientnet_b0_xnnpack_int8.pte'
    >>> from contract.measure import MeasureSpec
    >>> MeasureSpec.from_argv(MeasureSpec(runs=5).to_argv()).runs
    5
"""

from __future__ import annotations

from contract.errors import ContractError

__all__ = ["ContractError"]
