"""Rollout ``hf``: token-in/token-out generation with a Hugging Face model, for the CPU test bed.

verl 0.9.1 ships async rollouts for vLLM, SGLang and TensorRT-LLM only
(``verl/workers/rollout/base.py``, ``replica.py``), all GPU-bound. This module supplies the three parts
verl expects of a rollout backend, registered under the name ``hf``:

* :class:`HFRolloutServer`: the Ray actor the agent loops call (``generate`` returns verl's
  ``TokenOutput``), with the control methods verl's replica and trainer call (``wake_up``, ``sleep``,
  ``set_global_steps``, ...). It samples token by token with the KV cache, stops on end-of-sequence
  tokens and on the request's ``stop`` strings (kept in the output, as vLLM's
  ``include_stop_str_in_output``), and returns the sampled tokens' log-probs under the same
  temperature-scaled distribution verl's old-log-prob recompute uses;
* :class:`HFReplica`: launches one server per replica (``RolloutReplicaRegistry``);
* :class:`HFServerAdapter`: lives in each actor worker (``_ROLLOUT_REGISTRY``); verl's naive
  checkpoint engine hands it the trained weights after every step, and the replica's leader rank
  sends them to its server, so rollouts always sample from the current policy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

import torch
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"


def _get(cfg: Any, key: str) -> Any:
    """``cfg.key`` of a dataclass or DictConfig, None when absent."""
    try:
        return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
    except Exception:  # a struct DictConfig without the key
        return None


def server_name(replica_rank: int, suffix: str = "") -> str:
    """The Ray actor name of a replica's server (the adapter finds its server by it)."""
    return f"igpo_hf_rollout_{replica_rank}{suffix}"


def filtered_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``(V,)`` logits with everything outside the top-k / top-p (nucleus) set at -inf."""
    out = logits.clone()
    if 0 < top_k < out.numel():
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the smallest set reaching top_p
        out[order[drop]] = float("-inf")
    return out


def sample_token(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> tuple[int, float]:
    """One token from ``(V,)`` logits and its log-prob under ``softmax(logits / temperature)`` (greedy and
    log-prob of the raw softmax when ``temperature <= 0``); top-k / top-p restrict the sampling only."""
    logits = logits.float()
    if temperature <= 0:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, -1)[token])
    scaled = logits / temperature
    probs = torch.softmax(filtered_logits(scaled, top_k, top_p), dim=-1)
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(torch.log_softmax(scaled, -1)[token])


def cut_at_stop(tokenizer: Any, ids: list[int], stops: Iterable[str]) -> int | None:
    """The number of leading ``ids`` whose text first contains a stop string (None: no stop string)."""
    stops = [s for s in stops if s]
    if not stops or not any(s in tokenizer.decode(ids, skip_special_tokens=False) for s in stops):
        return None
    for k in range(1, len(ids) + 1):
        if any(s in tokenizer.decode(ids[:k], skip_special_tokens=False) for s in stops):
            return k
    return len(ids)


class HFRolloutServer:
    """A Ray actor serving ``generate`` with a Hugging Face causal LM on the CPU (see the module docstring)."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0, seed: int = 0):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, int(os.environ.get("IGPO_HF_ROLLOUT_THREADS", "1"))))
        self.config = config
        self.replica_rank = replica_rank
        # verl hands the replica the model config as an HFModelConfig or as its raw DictConfig
        path = _get(model_config, "local_path") or _get(model_config, "path")
        self.tokenizer = _get(model_config, "tokenizer")
        if self.tokenizer is None:
            from verl.utils import hf_tokenizer

            self.tokenizer = hf_tokenizer(_get(model_config, "tokenizer_path") or path)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, local_files_only=True
        ).eval()
        eos = {self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)}
        self.eos_ids = {int(e) for x in eos if x is not None for e in (x if isinstance(x, list) else [x])}
        self.generator = torch.Generator().manual_seed(seed + replica_rank)
        self.global_steps: int | None = None
        self.max_tokens = int(getattr(config, "response_length", 256))
        self._lock = threading.Lock()
        self.requests = 0

    async def ready(self) -> bool:
        return True

    # -- generation -------------------------------------------------------------------------------
    def _generate(self, prompt_ids: list[int], params: dict[str, Any]) -> TokenOutput:
        max_new = int(params.get("max_tokens") or params.get("max_new_tokens") or self.max_tokens)
        temperature = float(params.get("temperature", 1.0))
        top_k = int(params.get("top_k", -1) or -1)
        top_p = float(params.get("top_p", 1.0) or 1.0)
        stops = list(params.get("stop") or [])
        ids: list[int] = []
        lps: list[float] = []
        reason = "length"
        with self._lock, torch.no_grad():
            self.requests += 1
            past = None
            step_input = torch.tensor([list(prompt_ids)], dtype=torch.long)
            for _ in range(max(max_new, 0)):
                out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token, lp = sample_token(out.logits[0, -1], temperature, top_k, top_p, self.generator)
                ids.append(token)
                lps.append(lp)
                if token in self.eos_ids:
                    reason = "completed"
                    break
                cut = cut_at_stop(self.tokenizer, ids, stops) if stops else None
                if cut is not None:
                    ids, lps, reason = ids[:cut], lps[:cut], "completed"
                    break
                step_input = torch.tensor([[token]], dtype=torch.long)
        return TokenOutput(
            token_ids=ids,
            log_probs=lps if params.get("logprobs") else None,
            stop_reason=reason,
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps},
        )

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> TokenOutput:
        """verl's token-in/token-out call (``LLMServerClient.generate``); multimodal kwargs are refused."""
        if any(kwargs.get(k) for k in ("image_data", "video_data", "audio_data")):
            raise NotImplementedError("the hf rollout serves text only")
        return await asyncio.to_thread(self._generate, list(prompt_ids), dict(sampling_params))

    # -- weights and control ----------------------------------------------------------------------
    async def update_weights(
        self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None
    ) -> int:
        """Load the trainer's weights (HF names); returns how many tensors were loaded."""
        with self._lock:
            result = self.model.load_state_dict(state_dict, strict=False)
            tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
            missing = set(result.missing_keys) - tied
            if result.unexpected_keys or missing:
                raise ValueError(
                    f"hf rollout: weights from the trainer do not match the model: unexpected "
                    f"{sorted(result.unexpected_keys)[:5]}, missing {sorted(missing)[:5]}"
                )
        if global_steps is not None:
            self.global_steps = global_steps
        return len(state_dict)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def wake_up(self) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """One :class:`HFRolloutServer` per replica (no HTTP endpoint: agent loops call its handle)."""

    async def launch_servers(self) -> None:
        import ray

        name = server_name(self.replica_rank, self.name_suffix)
        server = (
            ray.remote(HFRolloutServer)
            .options(name=name, max_concurrency=self.max_concurrency, num_cpus=0)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"ray://{name}"

    async def wake_up(self) -> None:
        return None

    async def sleep(self) -> None:
        return None


class HFServerAdapter(BaseRollout):
    """The rollout side inside each actor worker: forwards trained weights to the replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self.is_leader_rank = self.rollout_rank == 0
        self._server = None

    def _server_handle(self) -> Any:
        import ray

        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(self, weights: Any, wire_format: str = "named_tensors", **kwargs: Any) -> None:
        """Every rank walks the generator (FSDP gathers each full tensor collectively); the leader sends."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout: weight wire format {wire_format!r} is not supported")
        state: dict[str, torch.Tensor] = {}
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            if self.is_leader_rank:
                state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader_rank:
            await self._server_handle().update_weights.remote(state, kwargs.get("global_steps"))


def register() -> None:
    """Make ``rollout.name=hf`` known to verl's two rollout registries (idempotent)."""
    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFReplica)
