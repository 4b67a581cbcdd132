"""Node GPU state for the extender: built from Node and Pod objects, kept current by a source, read per request.

`nodes` and `pods` turn Kubernetes objects into the pure `gpuguard.policy.gpustate` values (no I/O); `store` holds
them and recomputes one node's summary whenever that node or one of its pods changes, so the request path only looks
states up; `sources` feeds the store from a `--cluster-state` file or a Kubernetes watch.
"""
