"""The node agent DaemonSet: GPU backends, Prometheus collector, inventory reporter and time-slicing."""
