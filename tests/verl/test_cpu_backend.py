"""The CPU test bed's parts (igpo/verl/cpu) one by one: platform, rollout sampling and stopping, the
HF rollout server against a teacher-forced forward, weight sync, the Ray resource check, the config."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.tiny import tiny_model, tiny_tokenizer  # noqa: E402

from igpo.verl.cpu.rollout import (  # noqa: E402
    HFRolloutServer,
    cut_at_stop,
    filtered_logits,
    sample_token,
)


def test_platform_is_registered_and_speaks_cpu():
    from verl.plugin.platform.platform_manager import PlatformRegistry

    from igpo.verl.cpu.platform import PlatformCPU

    assert PlatformRegistry.get("cpu") is PlatformCPU
    p = PlatformCPU()
    assert (p.device_name, p.communication_backend_name(), p.ray_resource_name()) == ("cpu", "gloo", "GPU")
    dev = p.device_module
    free, total = dev.mem_get_info()
    assert 0 < free <= total
    state = dev.get_rng_state()
    a = torch.rand(3)
    dev.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))  # the RNG state round-trips through the device module
    dev.empty_cache(), dev.synchronize(), dev.set_device(0)
    assert dev.memory_allocated() == 0 and dev.is_available()


def test_rollout_name_hf_is_registered_with_verl():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    from igpo.verl.cpu.rollout import HFReplica, HFServerAdapter

    assert get_rollout_class("hf", "async") is HFServerAdapter
    assert get_rollout_replica_class("hf") is HFReplica


def test_top_k_top_p_filtering_by_hand():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    # nucleus 0.6: 0.5 alone is below 0.6, so 0.3 joins; 0.2 is outside
    kept = torch.isfinite(filtered_logits(logits, top_k=-1, top_p=0.6)).tolist()
    assert kept == [True, True, False]
    assert torch.isfinite(filtered_logits(logits, top_k=1, top_p=1.0)).tolist() == [True, False, False]
    assert torch.isfinite(filtered_logits(logits, top_k=-1, top_p=1.0)).all()


def test_sampled_token_log_prob_is_that_of_the_temperature_scaled_softmax():
    logits = torch.tensor([2.0, 1.0, -1.0, 0.5])
    tok, lp = sample_token(logits, 0.0, -1, 1.0, None)
    assert tok == 0 and lp == pytest.approx(float(torch.log_softmax(logits, -1)[0]))
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        tok, lp = sample_token(logits, 0.5, -1, 1.0, gen)
        seen.add(tok)
        assert lp == pytest.approx(float(torch.log_softmax(logits / 0.5, -1)[tok]), abs=1e-6)
    assert len(seen) >= 3  # it samples, not argmax
    for _ in range(20):  # top_k=1 restricts sampling to the argmax but not the reported log-prob
        tok, lp = sample_token(logits, 0.5, 1, 1.0, gen)
        assert tok == 0 and lp == pytest.approx(float(torch.log_softmax(logits / 0.5, -1)[0]), abs=1e-6)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_cut_at_stop_keeps_the_stop_string(tok):
    ids = tok.encode("<think>x</think>\n<tool_call>\n{}\n</tool_call> more", add_special_tokens=False)
    k = cut_at_stop(tok, ids, ["</tool_call>", "</answer>"])
    assert tok.decode(ids[:k]).endswith("</tool_call>")
    assert "</tool_call>" not in tok.decode(ids[: k - 1])
    assert cut_at_stop(tok, ids, ["</answer>"]) is None and cut_at_stop(tok, ids, []) is None


@pytest.fixture(scope="module")
def server(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("policy")
    model = tiny_model(tok)
    model.save_pretrained(path)
    cfg = SimpleNamespace(response_length=32)
    return HFRolloutServer(cfg, SimpleNamespace(tokenizer=tok, local_path=str(path)), seed=0), model


def teacher_forced_logprobs(model, prompt: list[int], out: list[int], temperature: float) -> list[float]:
    """Independent reference: one full forward over prompt + output, log-softmax of logits / T."""
    ids = torch.tensor([prompt + out])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    lp = torch.log_softmax(logits, -1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(out)]


def test_server_generates_with_log_probs_equal_to_a_teacher_forced_forward(server, tok):
    srv, model = server
    prompt = tok.encode(
        "<|im_start|>user\nwho is it?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 12, "logprobs": True}
    out = asyncio.run(srv.generate("r1", prompt_ids=prompt, sampling_params=params))
    assert 1 <= len(out.token_ids) <= 12 and len(out.log_probs) == len(out.token_ids)
    ref = teacher_forced_logprobs(model, prompt, out.token_ids, 1.0)
    assert max(abs(a - b) for a, b in zip(out.log_probs, ref, strict=True)) < 1e-5
    assert out.extra_fields == {"global_steps": None}
    greedy = asyncio.run(srv.generate("r2", prompt_ids=prompt, sampling_params={**params, "temperature": 0}))
    ids = torch.tensor([prompt])
    expect = model.generate(ids, max_new_tokens=len(greedy.token_ids), do_sample=False)[0, len(prompt) :]
    assert greedy.token_ids == expect.tolist()[: len(greedy.token_ids)]


def test_server_takes_trained_weights_and_refuses_foreign_ones(server, tok):
    srv, model = server
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["model.norm.weight"] = state["model.norm.weight"] * 0 + 0.5
    n = asyncio.run(srv.update_weights(state, global_steps=3))
    assert n == len(state) and srv.global_steps == 3
    assert torch.equal(srv.model.state_dict()["model.norm.weight"], state["model.norm.weight"])
    with pytest.raises(ValueError, match="unexpected.*not.a.weight"):
        asyncio.run(srv.update_weights({"not.a.weight": torch.zeros(1)}))
    asyncio.run(srv.update_weights({k: v.clone() for k, v in model.state_dict().items()}, global_steps=4))


def test_ray_resources_are_checked_before_ray_starts():
    from igpo.settings import SettingError
    from igpo.verl.cpu.run import check_ray_resources
    from igpo.verl.main import compose_config

    cfg = compose_config(["+platform=cpu", "trainer.n_gpus_per_node=2"])
    with pytest.raises(SettingError, match=r"num_cpus=8 is too few for 2 worker\(s\).*num_cpus=9"):
        check_ray_resources(
            compose_config(["+platform=cpu", "trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_cpus=8"])
        )
    check_ray_resources(
        compose_config(["+platform=cpu", "trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_cpus=9"])
    )
    with pytest.raises(SettingError, match="ulysses_sequence_parallel_size=2 must divide"):
        check_ray_resources(
            compose_config(["+platform=cpu", "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"])
        )
    assert cfg.actor_rollout_ref.rollout.name == "hf"


def test_cpu_platform_config_matches_the_embedded_default():
    from igpo.local.synthetic import ANSWER_TEMPLATE
    from igpo.verl.main import compose_config

    cfg = compose_config(["+platform=cpu"])
    assert cfg.algorithm.igpo.answer_template == ANSWER_TEMPLATE
    assert cfg.trainer.device == "cpu" and cfg.actor_rollout_ref.actor.strategy == "fsdp2"
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert (env.VERL_PLATFORM, env.VERL_USE_EXTERNAL_MODULES) == ("cpu", "igpo.verl.cpu")
    gpu = compose_config([])  # the GPU config carries none of it
    assert gpu.trainer.device == "cuda" and gpu.actor_rollout_ref.rollout.name == "vllm"
    assert "env_vars" not in gpu.ray_kwargs.ray_init.runtime_env


def test_export_refuses_a_folder_without_a_checkpoint(tmp_path):
    from igpo.verl.export import main

    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
