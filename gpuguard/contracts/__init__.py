"""Wire formats, one module per protocol: AdmissionReview, the kube-scheduler extender API, and our node annotation.

Models use the wire's own field names as aliases. Incoming Kubernetes objects tolerate unknown fields; our own
annotation forbids them and carries a version.
"""
