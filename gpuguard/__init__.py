"""gpuguard: GPU placement for KServe InferenceServices, correct by default.

This package is the shared core (policy, MIG catalog, wire contracts, Kubernetes and web helpers) that the three
services (`webhook`, `scheduler_ext`, `node_agent`) import. It never imports a service: `gpuguard.cli` alone wires
them together as the console script.
"""

__version__ = "0.1.0"
