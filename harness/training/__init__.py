"""The standardized training stage: every objective is trained by the same loop (`loop.train`)."""
