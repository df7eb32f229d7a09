"""The engine on a CUDA device: Triton kernels own γ and the learner, output still equals ``target.generate()``.

Skipped without a GPU (marked ``gpu``); on one, the zoo and tiny models run natively and the selection step takes the
Triton backend (``backend="auto"`` picks it for CUDA tensors).
"""
from __future__ import annotations

import pytest
import torch
from tiny import drafter_zoo, tiny_model

import hedgespec_fast as hs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def zoo_on_cuda():
    from hedgespec_fast import zoo

    try:
        return zoo.load(device="cuda")
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("policy", ["hedgespec", "hedge", "adanormalhedge", "ucbspec", "metasd", "tapout"])
def test_zoo_greedy_equals_target_generate_on_cuda(zoo_on_cuda, policy):
    from hedgespec_fast import zoo

    tokenizer, target, drafters = zoo_on_cuda
    pool = list(drafters.values()) + [hs.NGramDrafter()]
    for domain in ("python", "legal"):
        prompt = zoo.heldout_prompts(domain, n=1, prompt_tokens=40)[0]
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.cuda()
        plain = target.generate(ids, do_sample=False, max_new_tokens=48)
        out = hs.generate(target, ids, drafters=pool, max_new_tokens=48, policy=policy, draft_len=5)
        assert torch.equal(out.sequences, plain), (policy, domain)
        assert out.stats.host_syncs <= 2 * out.stats.rounds


@pytest.mark.parametrize("tree", [None, "depth=4,topk=3,total=16"])
def test_triton_and_torch_backends_agree_on_cuda(tree):
    target = tiny_model("llama", seed=6)
    drafters = [d.cuda() for d in drafter_zoo(target, seed=6)] + [hs.NGramDrafter()]
    target.cuda()
    prompt = torch.tensor([[9, 10, 11, 9, 10]], device="cuda")
    runs = {}
    for backend in ("torch", "triton"):
        selector = hs.HedgeSpecSelector(len(drafters), backend=backend, objective="mat").cuda()
        spec = hs.SpecConfig(backend=backend, objective="mat")
        runs[backend] = hs.generate(target, prompt, drafters=drafters, max_new_tokens=24, draft_len=3, policy=selector,
                                    eos_token_id=None, tree=tree, spec_config=spec)
    plain = target.generate(prompt, do_sample=False, max_new_tokens=24, eos_token_id=None)
    assert torch.equal(runs["triton"].sequences, plain)
    assert torch.equal(runs["torch"].sequences, plain)
    assert [r.chosen for r in runs["torch"].stats.records] == [r.chosen for r in runs["triton"].stats.records]


def test_sampling_on_cuda_is_seeded_and_bounded(zoo_on_cuda):
    tokenizer, target, drafters = zoo_on_cuda
    ids = tokenizer("def main(", return_tensors="pt", add_special_tokens=False).input_ids.cuda()
    kw = dict(drafters=list(drafters.values()), max_new_tokens=40, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    a, b = hs.generate(target, ids, **kw), hs.generate(target, ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert a.sequences.shape[1] <= ids.shape[1] + 40


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("policy", ["hedgespec", "fixed:0", "ucbspec"])
def test_static_graphed_rounds_equal_eager_and_target_generate_on_cuda(arch, policy):
    """Static caches with CUDA graphs (target verify and drafter steps replayed): the same tokens as the eager
    dynamic path and as ``target.generate()``, one host sync a round, and the graphs were really replayed."""
    from hedgespec_fast import graphs
    from hedgespec_fast.cache import static_caches_supported

    if not static_caches_supported():
        pytest.skip("static caches need transformers >= 5")
    target = tiny_model(arch, seed=8).cuda()
    drafters = [d.cuda() for d in drafter_zoo(target, seed=8)] + [hs.NGramDrafter()]
    prompt = torch.tensor([[9, 10, 11, 9, 10, 12, 9, 10]], device="cuda")
    plain = target.generate(prompt, do_sample=False, max_new_tokens=40, eos_token_id=None)
    runs = {}
    for mode, (cache, graphed) in {"eager": (None, False), "static": ("static", False),
                                   "graphs": ("static", True)}.items():
        spec = hs.SpecConfig(cache_implementation=cache, cuda_graphs=graphed, objective="mat")
        for _ in range(2):  # the second call replays the graphs captured by the first
            runs[mode] = hs.generate(target, prompt, drafters=drafters, max_new_tokens=40, draft_len=4,
                                     policy=policy, eos_token_id=None, seed=1, spec_config=spec)
            assert torch.equal(runs[mode].sequences, plain), (mode, policy)
    if policy == "fixed:0":  # learners' evaluation schedule follows measured costs, which the graphs change
        assert [r.accepted for r in runs["graphs"].stats.records] == [r.accepted for r in runs["eager"].stats.records]
    assert runs["graphs"].stats.host_syncs <= runs["graphs"].stats.rounds + 1
    _, _, graphed = graphs._KEPT[target]["target"]
    assert graphed is not None and graphed.reason is None and graphed.graphs, graphed and graphed.eager
