"""`solar-jax eval ARGS...` in-process, with JAX's compile-duration events summed: prints
one JSON line {"compile_s": ..., "trace_s": ..., "programs": ...} after the command.

benchmarks/eval.py runs this as the fresh process it times, so the end-to-end wall time is
the CLI's and the compile time comes from the same run (jax.monitoring listeners)."""

import json
import sys

import jax

totals = {"compile_s": 0.0, "trace_s": 0.0, "programs": 0}


def _on(event: str, seconds: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        totals["compile_s"] += seconds
        totals["programs"] += 1
    elif event in ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration"):
        totals["trace_s"] += seconds


jax.monitoring.register_event_duration_secs_listener(_on)
from solar_jax.cli import main  # noqa: E402  (after the listener, so no compile is missed)

rc = main(sys.argv[1:])
print("TIMING " + json.dumps(totals), flush=True)
sys.exit(rc)
