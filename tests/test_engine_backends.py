"""The engine on the Triton backend (through the interpreter on CPU) gives the torch backend's results."""
from __future__ import annotations

import pytest
import torch
from tiny import drafter_zoo, tiny_model

import hedgespec_fast as hs

pytest.importorskip("triton")


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
def test_triton_backend_matches_torch_backend(do_sample):
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs natively there, interpreted here
    target = tiny_model("llama", seed=6)
    drafters = [d.to(device) for d in drafter_zoo(target, seed=6)] + [hs.NGramDrafter()]
    target.to(device)
    prompt = torch.tensor([[9, 10, 11, 9, 10]], device=device)
    kw = dict(drafters=drafters, max_new_tokens=20, draft_len=3, eos_token_id=None, seed=2, do_sample=do_sample,
              temperature=0.8)
    runs = {}
    for backend in ("torch", "triton"):
        selector = hs.HedgeSpecSelector(len(drafters), backend=backend, objective="mat").to(device)
        spec = hs.SpecConfig(backend=backend, objective="mat")
        runs[backend] = (hs.generate(target, prompt, policy=selector, spec_config=spec, **kw),
                         selector)
    (ref, ref_sel), (tri, tri_sel) = runs["torch"], runs["triton"]
    assert torch.equal(ref.sequences, tri.sequences)
    if not do_sample:
        plain = target.generate(prompt, do_sample=False, max_new_tokens=20, eos_token_id=None)
        assert torch.equal(ref.sequences, plain)
    assert [r.chosen for r in ref.stats.records] == [r.chosen for r in tri.stats.records]
    for a, b in zip(ref.stats.records, tri.stats.records):
        torch.testing.assert_close(torch.tensor(a.gamma), torch.tensor(b.gamma), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_sel.weights(), tri_sel.weights(), atol=1e-4, rtol=1e-4)
    assert int(ref_sel.step) == int(tri_sel.step) > 0
