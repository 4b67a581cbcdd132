"""`gpuguard simulate`: replay an arrival trace over a simulated cluster with the extender's own pure scoring, against
kube-scheduler's default behaviour and an offline best fit, and report how well each packs."""
