"""Built-in tasks: one YAML per task (`<name>.yaml`: prompt, generation, stop, answer, sources,
metrics, needs) plus, where scoring needs code, one scoring module (`<name>.py`).

The scoring-module contract and the protocol record live in `harness.tasks.contract`; the registry
(built-ins, entry points `distill_bench.tasks`, `--plugin TASK.yaml`) in `harness.data.registry`.
"""
