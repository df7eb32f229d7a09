"""Draft trees: greedy losslessness on five architectures × {sdpa, eager}, every policy, odd trees, the spec parser,
the tree structure (masks, positions, merging) and the KV gather against a from-scratch recomputation."""
from __future__ import annotations

import pytest
import torch
from tiny import ARCHS, noisy_copy, tiny_model, truncated_copy

import hedgespec_fast as hs
from hedgespec_fast.cache import gather, new_cache
from hedgespec_fast.drafters import HFDrafter
from hedgespec_fast.drafters.base import DraftContext
from hedgespec_fast.logits import LogitsWarp
from hedgespec_fast.modeling import forward_logits
from hedgespec_fast.trees import (DynamicTree, MultiDraft, StaticTree, TokenTree, chain_tree, merge_trees, parse_tree,
                                  prefix_mask, tree_attention_mask)

TREES = ["depth=4,topk=3,total=10", "static:depth=2,topk=2", "paths:[[0],[1],[0,0],[0,0,0],[1,0]]",
         "chains:k=3,depth=3", "drafters:k=3,depth=4", "shared:depth=4,topk=2,total=9"]
POLICY_NAMES = ["hedgespec", "hedge", "adanormalhedge", "ucbspec", "exp3spec", "metasd", "tapout", "fixed:1",
                "fixed:3", "random", "oracle", "hedgespec+tapout"]
PROMPT = torch.tensor([[5, 17, 33, 5, 17, 60, 2, 44, 5]])


def with_attention(model, impl):
    model.config._attn_implementation = impl
    return model


def setup_models(arch, impl="sdpa"):
    target = with_attention(tiny_model(arch), impl)
    drafters = [noisy_copy(target, 0.05, 1), noisy_copy(target, 0.6, 2), truncated_copy(target, 1)]
    for d in drafters:
        with_attention(d, impl)
    return target, drafters + [hs.NGramDrafter()]


def reference(target, prompt, **kw):
    return target.generate(prompt, do_sample=False, **kw)


# -- greedy losslessness -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_trees_match_target_generate(arch, impl):
    target, drafters = setup_models(arch, impl)
    assert target.config._attn_implementation == impl and drafters[0].config._attn_implementation == impl
    ref = reference(target, PROMPT, max_new_tokens=20, eos_token_id=None)
    for tree in TREES:
        out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=20, tree=tree, policy="hedgespec",
                          eos_token_id=None, seed=1)
        assert torch.equal(out.sequences, ref), f"{arch}/{impl}/{tree}: tree output differs from target.generate()"
        assert out.stats.new_tokens == 20


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_eager_really_needs_the_additive_mask(arch):
    """Negative control for the eager runs above: eager adds a bool mask as 0/1 instead of masking, so the tree rows
    come out wrong with a bool mask and right with ours, which proves eager attention is the one running."""
    model = with_attention(tiny_model(arch), "eager")
    tree = TokenTree(torch.tensor([5, 7, 9, 11]), torch.tensor([-1, 0, 0, 1]), torch.tensor([0, 1, 1, 2]), 2)
    prefix = torch.tensor([3, 4, 6, 8])
    allowed = prefix_mask(prefix.numel(), tree.ancestors())
    expected = torch.stack([model(torch.cat([prefix, tree.tokens[path]]).view(1, -1)).logits[0, -1].detach()
                            for path in ([0], [0, 1], [0, 2], [0, 1, 3])])
    rows = {}
    for kind, mask in (("ours", tree_attention_mask(model, allowed)), ("bool", allowed[None, None])):
        cache = new_cache()
        forward_logits(model, prefix, cache, keep=1)
        with torch.no_grad():
            rows[kind] = forward_logits(model, tree.tokens, cache, keep=0, attention_mask=mask,
                                        position_ids=tree.position_ids(prefix.numel()))
    assert tree_attention_mask(model, allowed).dtype == torch.float32
    torch.testing.assert_close(rows["ours"], expected, atol=1e-4, rtol=1e-4)
    assert (rows["bool"] - expected).abs().max() > 1e-2


@pytest.mark.parametrize("tree", ["depth=4,topk=3,total=12", "shared:depth=3,topk=2,total=8"])
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_with_a_tree(policy, tree):
    target, drafters = setup_models("llama")
    ref = reference(target, PROMPT, max_new_tokens=16, eos_token_id=None)
    out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=16, tree=tree, policy=policy,
                      eos_token_id=None, seed=3)
    assert torch.equal(out.sequences, ref), f"{policy}/{tree}"
    assert sum(r.emitted for r in out.stats.records) == 16


def test_custom_generate_takes_a_tree_object():
    target, drafters = setup_models("qwen2")
    ref = reference(target, PROMPT, max_new_tokens=12, eos_token_id=None)
    seq = target.generate(PROMPT, custom_generate=hs.custom_generate, drafters=drafters, max_new_tokens=12,
                          eos_token_id=None, do_sample=False, tree=hs.DynamicTree(depth=3, topk=2, total=6))
    assert torch.equal(seq, ref)


# -- odd trees ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    return setup_models("llama")


@pytest.mark.parametrize("tree", [
    "paths:[[0]]",  # a single draft node
    "paths:[[0],[0,0],[0,0,0],[0,0,0,0],[0,0,0,0,0],[0,0,0,0,0,0]]",  # one deep chain
    "static:depth=1,topk=8",  # wide and flat
    "depth=1,topk=1,total=1",
    "depth=6,topk=1,total=3",  # fewer nodes than levels
    "depth=3,topk=5,total=200",  # more budget than candidates
    "chains:k=1,depth=1",
    "drafters:k=9,depth=2",  # more drafters asked for than the pool has
])
def test_odd_trees(llama, tree):
    target, drafters = llama
    ref = reference(target, PROMPT, max_new_tokens=14, eos_token_id=None)
    out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=14, tree=tree, policy="random",
                      eos_token_id=None, seed=0)
    assert torch.equal(out.sequences, ref), tree


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 5])
@pytest.mark.parametrize("tree", ["depth=5,topk=3,total=16", "static:depth=4,topk=2", "drafters:k=2,depth=5"])
def test_branches_past_max_new_tokens(llama, tree, max_new_tokens):
    """The tree is cut to the tokens left: never one token too many, also from a one-token prompt (no prefill)."""
    target, drafters = llama
    for prompt in (PROMPT, torch.tensor([[5]])):
        ref = reference(target, prompt, max_new_tokens=max_new_tokens, eos_token_id=None)
        out = hs.generate(target, prompt, drafters=drafters, max_new_tokens=max_new_tokens, tree=tree,
                          policy="fixed:0", eos_token_id=None)
        assert torch.equal(out.sequences, ref)
        assert all(r.emitted <= 5 + 1 for r in out.stats.records)


@pytest.mark.parametrize("tree", ["depth=5,topk=3,total=20", "shared:depth=5,topk=2,total=12"])
def test_eos_inside_a_branch(llama, tree):
    target, drafters = llama
    greedy = reference(target, PROMPT, max_new_tokens=30, eos_token_id=None)[0, PROMPT.shape[1]:].tolist()
    eos = next(t for j, t in enumerate(greedy) if j >= 5 and t not in greedy[:j])
    ref = reference(target, PROMPT, max_new_tokens=30, eos_token_id=eos, pad_token_id=eos)
    out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=30, tree=tree, policy="fixed:0",
                      eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(out.sequences, ref)
    assert out.sequences[0, -1].item() == eos


def test_position_dependent_processors_in_trees(llama):
    """min-new-tokens and the repetition penalty read each node's own prefix (committed text + its path)."""
    target, drafters = llama
    greedy = reference(target, PROMPT, max_new_tokens=20, eos_token_id=None)[0, PROMPT.shape[1]:].tolist()
    eos = greedy[2]
    kw = dict(max_new_tokens=16, eos_token_id=eos, pad_token_id=eos, min_new_tokens=10, repetition_penalty=1.3)
    ref = reference(target, PROMPT, **kw)
    for tree in ("depth=3,topk=2,total=6", "chains:k=2,depth=2", "static:depth=2,topk=2"):
        out = hs.generate(target, PROMPT, drafters=drafters, tree=tree, policy="random", seed=2, **kw)
        assert torch.equal(out.sequences, ref), tree


def test_ngram_only_pool_contributes_its_chain(llama):
    target, _ = llama
    ref = reference(target, PROMPT, max_new_tokens=12, eos_token_id=None)
    for tree in ("depth=4,topk=3,total=10", "chains:k=3,depth=3", "shared:depth=3,total=6"):
        out = hs.generate(target, PROMPT, drafters=[hs.NGramDrafter()], max_new_tokens=12, tree=tree,
                          eos_token_id=None)
        assert torch.equal(out.sequences, ref)
        assert all(r.drafted <= 3 or tree.startswith("depth=4") for r in out.stats.records)


def test_tree_gamma_is_the_top_l_mass(llama):
    """The recorded γ under a top-L tree is 1{argmax p ∈ TopL(q_i)} on the true prefix, for every drafter."""
    from hedgespec_fast.kernels import acceptance_probs

    target, drafters = llama
    out = hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=16, tree="depth=3,topk=3,total=8",
                      policy="hedgespec", objective="mat", eos_token_id=None)  # mat: γ every round but the last
    seq = out.sequences[0]
    with torch.no_grad():
        t_logits = target(seq.view(1, -1)).logits[0]
        q_logits = torch.stack([d(seq.view(1, -1)).logits[0] for d in drafters[:3]])
    pos = PROMPT.shape[1]
    for record in out.stats.records:
        rows = slice(pos - 1, pos - 1 + record.emitted)
        expected = acceptance_probs(t_logits[rows], q_logits[:, rows], mode="topl_greedy", top_l=3, backend="torch")
        if record is not out.stats.records[-1]:
            torch.testing.assert_close(torch.tensor(record.gamma)[:3], expected, atol=0, rtol=0)
        pos += record.emitted
    assert out.stats.records[-1].gamma is None  # nobody would learn from the last round's γ


# -- KV gather against recomputation --------------------------------------------------------------------------------
def layer_kv(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("shape", [DynamicTree(3, 3, 9), StaticTree.full(2, 2)], ids=["dynamic", "static"])
def test_kv_gather_equals_recomputation(arch, shape):
    """Target and drafter caches after gathering a root-to-leaf path equal a fresh forward of prefix + path."""
    target = tiny_model(arch)
    drafter = HFDrafter(noisy_copy(target, 0.3, 1))
    prefix = torch.tensor([3, 9, 27, 81, 50, 11])
    length = prefix.numel()
    ids = torch.zeros((1, 64), dtype=torch.long)
    ids[0, :length] = prefix
    drafter.prefill(prefix.view(1, -1))
    with torch.no_grad():
        tree = drafter.propose_tree(shape, 3, DraftContext(ids, length, LogitsWarp(), False, None))
        cache = new_cache()
        forward_logits(target, prefix[:-1], cache, keep=1)
        mask = tree_attention_mask(target, prefix_mask(length - 1, tree.ancestors()))
        rows = forward_logits(target, tree.tokens, cache, keep=0, attention_mask=mask,
                              position_ids=tree.position_ids(length - 1))
    path = max(tree.paths(), key=len)
    seq = torch.cat([prefix, tree.tokens[path[1:]]])
    with torch.no_grad():
        fresh_logits = target(seq.view(1, -1)).logits[0]
    torch.testing.assert_close(rows[path], fresh_logits[length - 1 :], atol=1e-4, rtol=1e-4)

    gather(cache, length - 1, torch.tensor(path))
    fresh = new_cache()
    with torch.no_grad():
        forward_logits(target, seq, fresh, keep=1)
    for (k, v), (fk, fv) in zip(layer_kv(cache), layer_kv(fresh)):
        torch.testing.assert_close(k, fk, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(v, fv, atol=1e-5, rtol=1e-4)

    # The drafter keeps the fed part of the path; then a commit of the emitted tokens leaves it in sync.
    slots = tree.sources[0].local[path[1:]].tolist()
    kept = drafter.settle_tree(slots)
    assert slots[: len(path) - 2] == sorted(slots[: len(path) - 2]) and min(slots[: len(path) - 2], default=0) >= 0
    assert kept == len(path) - 1 - (slots[-1] < 0)  # inner nodes of a path were all fed; a leaf may have been
    emitted = torch.cat([tree.tokens[path[1:]], torch.tensor([7])])
    beliefs = drafter.commit(emitted, emitted.tolist(), kept, True)
    full = torch.cat([prefix, emitted])
    with torch.no_grad():
        expected = drafter.model(full.view(1, -1)).logits[0, length - 1 : length - 1 + emitted.numel()]
        fresh = new_cache()
        forward_logits(drafter.model, full, fresh, keep=1)
    torch.testing.assert_close(beliefs.logits, expected, atol=1e-4, rtol=1e-4)
    for (k, _), (fk, _) in zip(layer_kv(drafter.cache), layer_kv(fresh)):
        torch.testing.assert_close(k, fk, atol=1e-5, rtol=1e-4)


def test_tree_drafter_stays_in_sync_over_random_rounds():
    """Random rounds of propose_tree / settle / commit with random accepted paths, other drafters' rounds and skipped
    evaluations: beliefs always equal a fresh forward."""
    target = tiny_model("qwen2")
    drafter = HFDrafter(noisy_copy(target, 0.3, 1))
    rng = torch.Generator().manual_seed(0)
    seq = torch.tensor([3, 9, 27, 81, 50])
    drafter.prefill(seq.view(1, -1))
    ids = torch.zeros((1, 200), dtype=torch.long)
    shapes = [DynamicTree(3, 2, 5), StaticTree.full(2, 2), hs.trees.SampledChains(3), DynamicTree(1, 3, 3)]
    owed = 0  # positions committed since the drafter last reported beliefs
    for round_index in range(16):
        ids[0, : seq.numel()] = seq
        kept = 0
        if round_index % 3 != 2:
            ctx = DraftContext(ids, seq.numel(), LogitsWarp(), False, rng)
            tree = drafter.propose_tree(shapes[round_index % 4], 3, ctx)
            paths = tree.paths()
            path = paths[int(torch.randint(len(paths), (1,), generator=rng))]
            path = path[: int(torch.randint(1, len(path) + 1, (1,), generator=rng))]
            kept = drafter.settle_tree(tree.sources[0].local[path[1:]].tolist())
            emitted = torch.cat([tree.tokens[path[1:]], torch.randint(2, 97, (1,), generator=rng)])
        else:
            emitted = torch.randint(2, 97, (3,), generator=rng)
        want = round_index % 4 != 1  # a deferred round is reported with the next evaluated one
        beliefs = drafter.commit(emitted, emitted.tolist(), kept, want)
        owed = emitted.numel() + (owed if round_index and (round_index - 1) % 4 == 1 else 0)
        seq = torch.cat([seq, emitted])
        with torch.no_grad():
            expected = drafter.model(seq.view(1, -1)).logits[0, seq.numel() - owed - 1 : -1]
        if want:
            torch.testing.assert_close(beliefs.logits, expected, atol=1e-4, rtol=1e-4)


# -- structure ------------------------------------------------------------------------------------------------------
def test_tree_structure():
    tree = TokenTree(torch.tensor([5, 7, 9, 11, 13]), torch.tensor([-1, 0, 0, 1, 3]), torch.tensor([0, 1, 1, 2, 3]), 3)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]])
    assert torch.equal(tree.ancestors(), expected.bool())
    assert tree.position_ids(10).tolist() == [[10, 11, 11, 12, 13]]
    assert sorted(tree.paths()) == [[0, 1, 3, 4], [0, 2]]
    allowed = prefix_mask(2, tree.ancestors())
    assert allowed.shape == (5, 7) and bool(allowed[:, :2].all())


def test_merge_deduplicates_and_keeps_trials():
    root = torch.tensor(4)
    q = torch.softmax(torch.randn(2, 10), -1)
    greedy = chain_tree(root, torch.tensor([7, 8]), None)
    sampled = chain_tree(root, torch.tensor([7, 9]), q)
    other = chain_tree(root, torch.tensor([6]), None)
    merged = merge_trees([greedy, sampled, other])
    assert merged.tokens.tolist() == [4, 7, 8, 9, 6]  # the shared first token is one node
    assert merged.parents.tolist() == [-1, 0, 1, 1, 0]
    assert merged.depth == 2
    child, q_row = merged.trials.child.tolist(), merged.trials.q_row.tolist()
    assert [(c, r) for c, r in zip(child[0], q_row[0]) if c >= 0] == [(1, -1), (1, 0), (4, -1)]
    assert [(c, r) for c, r in zip(child[1], q_row[1]) if c >= 0] == [(2, -1), (3, 1)]
    deterministic = merge_trees([greedy, chain_tree(root, torch.tensor([7, 8]), None), other])
    assert deterministic.trials is None and deterministic.size == 4


def test_static_tree_shapes():
    assert StaticTree.full(2, 3).paths[:4] == ((0,), (1,), (2,), (0, 0))
    assert len(StaticTree.full(3, 2).paths) == 2 + 4 + 8
    assert StaticTree(((0,), (0, 1))).top_l == 2 and StaticTree(((0,), (0, 1))).depth == 2
    assert StaticTree.full(3, 2).pruned(1).paths == ((0,), (1,))


# -- the spec and bad input -----------------------------------------------------------------------------------------
def test_parse_tree_specs():
    assert parse_tree(None) is None and parse_tree("chain") is None
    assert parse_tree("depth=5,topk=4,total=32") == DynamicTree(5, 4, 32)
    assert parse_tree("dynamic: total=16") == DynamicTree(None, 4, 16)
    assert parse_tree("static:depth=2,topk=2") == StaticTree.full(2, 2)
    assert parse_tree("paths:[[0],[1],[0,0]]").paths == ((0,), (1,), (0, 0))
    assert parse_tree("chains:k=4,depth=5") == MultiDraft("chains", 5, 4)
    assert parse_tree("drafters:depth=3") == MultiDraft("drafters", 3, 2)
    assert parse_tree("shared:depth=5,topk=4,total=32") == MultiDraft("shared", 5, 4, 4, 32)
    shape = DynamicTree(3)
    assert parse_tree(shape) is shape


@pytest.mark.parametrize("spec, message", [
    ("depth=five", "not key=integer"),
    ("depth=0", "must be an integer >= 1"),
    ("banana:depth=3", "unknown kind 'banana'"),
    ("static:depth=3", "needs depth= and topk="),
    ("static:depth=8,topk=8", "more than 4096 nodes"),
    ("paths:[[0],[0,1,0]]", "has no parent path"),
    ("paths:[0, 1]", "list of lists of ranks"),
    ("paths:[[0]", "not a JSON list"),
    ("chains:topk=3", "chains trees take depth, k"),
])
def test_bad_tree_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_tree(spec)


def test_bad_tree_input_through_generate(llama):
    target, drafters = llama
    with pytest.raises(ValueError, match="bad tree spec 'tree please'"):
        hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=4, tree="tree please")
    with pytest.raises(TypeError, match="tree must be None"):
        hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=4, tree=5)
    with pytest.raises(ValueError, match="takes draft_len as its depth"):
        hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=4, tree="topk=2", draft_len=0)


def test_attention_without_dense_masks_is_refused():
    target, drafters = setup_models("llama")
    with_attention(target, "flash_attention_2")
    with pytest.raises(ValueError, match="the target uses attn_implementation='flash_attention_2'"):
        hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=4, tree="depth=2", eos_token_id=None)
    with_attention(target, "sdpa")
    with_attention(drafters[0], "flex_attention")
    with pytest.raises(ValueError, match="drafter 'LlamaForCausalLM' uses attn_implementation='flex_attention'"):
        hs.generate(target, PROMPT, drafters=drafters, max_new_tokens=4, tree="depth=2", policy="fixed:0",
                    eos_token_id=None)
