"""BentoML serving: the service, its request types, hot swap, batching and packaging."""
