"""The kube-scheduler extender: pure filter/prioritize, a node GPU-state cache, and the HTTP server."""
