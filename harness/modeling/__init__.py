"""Model loading, GGUF conversion, depth pruning, vocabulary checks and tiny test models.

`harness.models` re-exports the public API; the submodules keep each concern small.
"""
