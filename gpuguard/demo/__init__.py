"""`gpuguard demo`: the three services as real processes on 127.0.0.1, and a handful of realistic InferenceService
pods through admission and scheduling. Talks to the services over HTTP only; imports none of them."""
