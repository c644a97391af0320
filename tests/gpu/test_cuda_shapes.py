"""The attention kernels on the shapes where indexing goes wrong: head_dim 64,
80, 128 and 256, GQA ratios 1, 2, 4 and 8, prompts across page boundaries,
a sliding window, and page sizes 16 and 32 with chunked prefills and decode
rows in one batch. Small random models (made from the core's parameter list),
the GPU (float32) against the CPU's exact path."""

import numpy as np
import pytest
from gpu_support import DEVICE, greedy, random_model, require_cuda

from conftest import max_rel_error
from ferrolm import LLM, Transformer

require_cuda()

pytestmark = pytest.mark.gpu

# Same f32 math on both sides, only the order of sums differs.
TOLERANCE = 1e-4


def config(head_dim: int, gqa: int, **extra) -> dict:
    kv_heads = 2 if gqa <= 2 else 1
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": kv_heads * gqa,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "vocab_size": 96,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "torch_dtype": "float32", **extra,
    }


def gpu_against_cpu(model_dir, tokens: list[int], decode: int = 2) -> float:
    """Max relative error of the GPU's logits (prompt, then `decode` steps) against the CPU's."""
    logits = {}
    for device, dtype in (("cpu", "float32"), (DEVICE, "float32")):
        model = Transformer.from_pretrained(model_dir, device=device, dtype=dtype, max_seq_len=256)
        n = len(tokens) - decode
        rows = [model.forward([tokens[:n]])[0]]
        rows += [model.forward([[t]], start_pos=n + i)[0] for i, t in enumerate(tokens[n:])]
        logits[device] = np.concatenate(rows)
        del model
    return max_rel_error(logits[DEVICE], logits["cpu"])


@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
def test_head_dims_and_gqa_ratios(tmp_path, head_dim, gqa):
    model_dir = random_model(tmp_path / "model", config(head_dim, gqa), seed=head_dim + gqa)
    tokens = np.random.default_rng(gqa).integers(0, 96, 43).tolist()  # 41 + 2: across three 16-token pages
    err = gpu_against_cpu(model_dir, tokens)
    assert err < TOLERANCE, f"head_dim {head_dim}, gqa {gqa}: max relative error {err:.2e}"


def test_sliding_window(tmp_path):
    cfg = config(64, 2, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=24)
    cfg.pop("head_dim")
    cfg["hidden_size"] = 128
    model_dir = random_model(tmp_path / "model", cfg)
    tokens = np.random.default_rng(3).integers(0, 96, 70).tolist()
    err = gpu_against_cpu(model_dir, tokens, decode=4)
    assert err < TOLERANCE, f"sliding window: max relative error {err:.2e}"


@pytest.mark.parametrize("page_size", [16, 32])
def test_page_sizes_with_chunked_prefill_and_decode_in_one_batch(tmp_path, page_size):
    """Prompts of 1 to 90 tokens at once with 48 tokens a step: steps mix
    prefill chunks at start positions > 0 with other sequences' decode rows.
    Each request must continue exactly as it does alone."""
    model_dir = random_model(tmp_path / "model", config(80, 4))
    rng = np.random.default_rng(page_size)
    prompts = [rng.integers(0, 96, int(k)).tolist() for k in (1, 5, 17, 33, 47, 64, 90)]
    with LLM(model_dir, device=DEVICE, dtype="float32", max_seq_len=128, page_size=page_size,
             max_batch_tokens=48, prefix_caching=False) as llm:
        batched = llm.generate(prompts, greedy(6), use_tqdm=False)
        single = [llm.generate([p], greedy(6), use_tqdm=False)[0] for p in prompts]
        assert llm.stats()["used_pages"] == 0
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
