"""Which JAX platforms to start when nothing says: the CPU alone on a machine with no
accelerator, so the TPU and GPU compile-only packages cost nothing there.

The test extras install libtpu and the CUDA plugin on every machine (the ahead-of-time
tests compile for TPU and GPU targets without one, solar_jax.aot). Left to itself, JAX then
tries both at startup on a CPU-only machine: libtpu prints five lines of warnings
("could not determine TPU accelerator type", ...) and the CUDA plugin a ten-line traceback
(its version check calls cuInit with no driver), both on stderr, and the attempts take
0.1-0.8 s. Neither could ever give a device there, so where no TPU chip and no GPU driver
is present and `JAX_PLATFORMS` is unset, we start the CPU only — what JAX would end up
with anyway. Any machine with an accelerator, or a `JAX_PLATFORMS` of the user's, is left
alone. Compile-only TPU/GPU devices (jax.experimental.topologies) work with the CPU
platform, which is how solar_jax.aot uses them.
"""

from __future__ import annotations

import glob
import os
import sys

# PCI vendor ids: Google (TPU); NVIDIA and AMD devices are found through their drivers.
_GOOGLE_PCI_VENDOR = "0x1ae0"


def _tpu_chips_present() -> bool:
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _gpu_driver_present() -> bool:
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd"))


def accelerator_present() -> bool:
    return _tpu_chips_present() or _gpu_driver_present()


def default_to_cpu_without_accelerator() -> bool:
    """Start only the CPU platform when JAX_PLATFORMS is unset and this machine has no
    accelerator. Returns whether it did. Safe to call before or after `import jax`, as long
    as no backend has started yet (then it changes nothing)."""
    if os.environ.get("JAX_PLATFORMS") or accelerator_present():
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax = sys.modules.get("jax")
    if jax is not None:  # imported already: its config read the environment at import
        try:
            from jax._src import xla_bridge
            if not xla_bridge.backends_are_initialized() and not jax.config.jax_platforms:
                jax.config.update("jax_platforms", "cpu")
        except (ImportError, AttributeError):
            pass
    return True
