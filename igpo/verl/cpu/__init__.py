"""The CPU test bed: verl 0.9.1's real trainer (V1 sync loop, Ray, TransferQueue, FSDP2 on gloo, the
``igpo_search`` agent loop, the answer copies in the old-log-prob recompute) on a machine without a GPU.

It exists so that the cluster path is run end to end on every commit (``tests/verl/test_cpu_trainer.py``)
and so that a cluster config can be debugged on a laptop (``IGPO_ENGINE=verl bash
policy_optimization.sh`` without a GPU). **Nothing here is used on a GPU node**: it takes effect only in
processes started with ``VERL_PLATFORM=cpu`` and ``VERL_USE_EXTERNAL_MODULES=igpo.verl.cpu``
(:data:`CPU_ENV`; ``configs/igpo_cpu.yaml`` passes both to every Ray process), and importing this
package anywhere else changes nothing but verl's registries, under names no GPU config uses.

What it supplies, all found by driving verl on a 2-core machine:

* platform ``cpu`` (:mod:`igpo.verl.cpu.platform`): device ``cpu``, collectives on gloo, workers on
  fake Ray ``GPU`` resources;
* process groups: verl builds the backend string ``cpu:gloo,{device}:{backend}``, which on the CPU
  names the CPU twice (torch refuses it); in this platform the default becomes plain ``gloo``;
* the FSDP engines registered for device ``cpu`` too (verl registers them for cuda/npu only);
  :mod:`igpo.verl.engine` swaps in the IGPO engine as on a GPU node; FSDP2's CPU offload of the
  forward-only reference model without pinned memory (pinning needs an accelerator);
* rollout ``hf`` (:mod:`igpo.verl.cpu.rollout`): Hugging Face generation with weight sync.

The settings that make verl run here (FSDP2, sdpa attention, fp32, no pinned offload, small
batches, Ray resources) are in ``configs/igpo_cpu.yaml``; :mod:`igpo.verl.cpu.run` prepares the
embedded default's task, handler and warmed policy and starts the trainer.
"""

from __future__ import annotations

import os
import sys

from igpo.verl.cpu.platform import PLATFORM

#: Environment that activates the test bed in a process (and, through Ray's runtime env, its workers).
CPU_ENV = {"VERL_PLATFORM": PLATFORM, "VERL_USE_EXTERNAL_MODULES": "igpo.verl.cpu"}


def active() -> bool:
    """True in a process that runs verl on the CPU test bed."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM


def _gloo_process_groups() -> None:
    """verl's default backend string for the platform, without naming the CPU twice."""
    import verl.utils.distributed as dist_utils

    original = dist_utils.initialize_global_process_group_ray
    if getattr(original, "_igpo_cpu", False):
        return

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray._igpo_cpu = True  # type: ignore[attr-defined]
    dist_utils.initialize_global_process_group_ray = initialize_global_process_group_ray
    module = sys.modules.get("verl.workers.engine_workers")
    if module is not None:  # imported before us: its own reference too
        module.initialize_global_process_group_ray = initialize_global_process_group_ray


def _cpu_engines() -> None:
    """verl's FSDP engines for device ``cpu`` (registered for cuda/npu only)."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, cls in (
        ("language_model", FSDPEngineWithLMHead),
        ("value_model", FSDPEngineWithValueHead),
    ):
        table = EngineRegistry._engines.setdefault(model_type, {})
        for backend in ("fsdp", "fsdp2"):
            table.setdefault(backend, {}).setdefault(PLATFORM, cls)
    if "igpo.verl.engine" in sys.modules:  # already installed for cuda/npu: extend it to cpu
        sys.modules["igpo.verl.engine"].install()


def _unpinned_offload() -> None:
    """FSDP2's ``CPUOffloadPolicy(pin_memory=True)`` (verl's forward-only reference model) pins host
    memory, which needs an accelerator; on the CPU the same policy without pinning."""
    import verl.workers.engine.fsdp.transformer_impl as impl

    policy = impl.CPUOffloadPolicy
    if policy is None or getattr(policy, "_igpo_cpu", False):
        return

    def unpinned(*args, **kwargs):
        return policy(*args, **{**kwargs, "pin_memory": False})

    unpinned._igpo_cpu = True  # type: ignore[attr-defined]
    impl.CPUOffloadPolicy = unpinned


def install() -> None:
    """Register the platform (always) and, in a test-bed process, the process-group, engine and rollout
    pieces (idempotent)."""
    from igpo.verl.cpu import rollout

    rollout.register()
    if active():
        _gloo_process_groups()
        _cpu_engines()
        _unpinned_offload()


install()
