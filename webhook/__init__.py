"""The mutating and validating admission webhook: pure decisions in `review`, HTTP in `app`."""
