"""`solar-jax eval ARGS...` in-process, with JAX's compile-duration events summed: prints
one JSON line {"compile_s": ..., "trace_s": ..., "programs": ...} after the command.

benchmarks/eval.py runs this as the fresh process it times, so the end-to-end wall time is
the CLI's and the compile time comes from the same run (jax.monitoring listeners). It runs
as the console command does: restarted once with the huge-page tunable before its parser
is built and jax imported (solar_jax.hugepages), then `main()` on sys.argv, which ends the
process the same way (solar_jax.cli)."""

import json
import sys

from solar_jax import hugepages

hugepages.reexec()  # as `solar-jax eval`: first thing, a bare interpreter start

import jax  # noqa: E402

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

rc = main()  # argv None: the console command's path
print("TIMING " + json.dumps(totals), flush=True)
sys.exit(rc)
