"""Error types. Every error a user can cause names the offending field or input and the fix."""


class DistillBenchError(Exception):
    """Base class for errors reported to the user without a traceback."""


class ConfigError(DistillBenchError):
    """A config file or override failed validation; the message lists field paths and hints."""


class HubUnavailableError(DistillBenchError):
    """A Hugging Face Hub id was requested but the Hub cannot be reached (offline)."""


class VocabMismatchError(DistillBenchError):
    """Teacher and student do not share a tokenizer/vocabulary, so their logits cannot be compared."""


class DataError(DistillBenchError):
    """A dataset file or source is missing or malformed."""


class ObjectiveError(DistillBenchError):
    """An objective is unknown, misconfigured, or incompatible with the requested computation."""


class TrainingAborted(DistillBenchError):
    """Training stopped (e.g. too many non-finite steps); the last good checkpoint is intact."""


class LockHeldError(DistillBenchError):
    """Another live process writes the same results (or run) directory; the message names it."""


class DiskError(DistillBenchError):
    """Writing results failed for lack of space or permission; the message names the path, the
    bytes needed where known, and how to resume."""
