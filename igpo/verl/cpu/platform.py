"""verl platform ``cpu``: the CPU test bed's device, collective backend and Ray resource.

verl 0.9.1 picks a platform once per process (``verl/plugin/platform/platform_manager.py``); with no
accelerator it falls back to ``nvidia`` and CUDA calls fail. ``VERL_PLATFORM=cpu`` selects this one
once it is registered (importing :mod:`igpo.verl.cpu` registers it; see there for how every Ray
process imports it). Workers still ask Ray for ``GPU`` resources (verl's resource pools are built on
them): the test bed starts Ray with that many *fake* GPUs, each worker then runs on the CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM = "cpu"
#: What ``get_device_id()`` returns: verl passes it to ``.to(...)`` and ``torch.device(...)``, where an
#: integer would mean an accelerator.
CPU_DEVICE = torch.device("cpu")


def _mem_get_info() -> tuple[int, int]:
    """(free, total) bytes of host memory, as ``torch.cuda.mem_get_info`` reports device memory."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)
    except ImportError:  # pragma: no cover - psutil comes with ray
        return 0, 0


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


#: What verl calls on ``get_torch_device()`` (``torch.cuda`` on GPUs), for the CPU: ``torch.cpu``'s own
#: functions where it has them, no-ops for caches and memory fractions, host memory for ``mem_get_info``.
CPU_DEVICE_MODULE = SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: CPU_DEVICE,
    set_device=_noop,
    synchronize=_noop,
    empty_cache=_noop,
    ipc_collect=_noop,
    set_per_process_memory_fraction=_noop,
    mem_get_info=lambda *a, **k: _mem_get_info(),
    memory_allocated=_zero,
    memory_reserved=_zero,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    reset_peak_memory_stats=_noop,
    get_device_name=lambda *a, **k: "cpu",
    get_rng_state=lambda *a, **k: torch.get_rng_state(),
    set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    current_stream=torch.cpu.current_stream,
    stream=lambda *a, **k: nullcontext(),
    Stream=torch.cpu.Stream,
    Event=torch.cpu.Event,
)


@PlatformRegistry.register(platform=PLATFORM)
class PlatformCPU(PlatformBase):
    """Device ``cpu``, collectives on ``gloo``, one (fake) Ray ``GPU`` per worker."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> Any:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM

    def current_device(self) -> torch.device:  # type: ignore[override]
        return CPU_DEVICE

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
