"""distill-bench: compare knowledge-distillation objectives for language models on equal footing."""

__version__ = "0.1.0"
