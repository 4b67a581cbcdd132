"""Everything that talks to the Kubernetes API, and the cluster-state file that stands in for it.

The only package that imports `kubernetes` (an import-linter contract). Services depend on the narrow functions
and Protocols here, never on the client library, so the whole suite runs with no cluster.
"""
