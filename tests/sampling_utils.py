"""Shared by the sampling-losslessness tests: a tiny-vocabulary setting, the target's exact distribution, a χ² test."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chisquare
from tiny import noisy_copy, tiny_model, truncated_copy
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

import hedgespec_fast as hs

P_ACCEPT = 1e-3  # a correct sampler fails this once in a thousand runs (seeds are fixed, so it is deterministic)
P_REJECT = 1e-6
VOCAB = 8
PROMPT = torch.tensor([[2, 3, 4, 2, 3]])


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """χ² p-value, pooling cells whose expected count is below 5 into one."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue)


def tiny_vocab_models():
    """A V = 8 target and three drafters of every kind: a very noisy copy, a truncated copy, n-gram lookup."""
    target = tiny_model("llama", vocab=VOCAB, init_std=0.3)
    return target, [noisy_copy(target, 1.0, 1), truncated_copy(target, 1), hs.NGramDrafter()]


def exact_first_two(target, temperature: float, top_p: float) -> np.ndarray:
    """P(x1, x2 | PROMPT), flattened ``[V·V]``, under the warping generate() applies (temperature, then top-p)."""
    warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]

    def dist(ids):
        with torch.no_grad():
            scores = target(ids).logits[:, -1].float()
        for w in warpers:
            scores = w(ids, scores)
        return torch.softmax(scores, -1)[0]

    first = dist(PROMPT)
    joint = torch.stack([first[a] * dist(torch.cat([PROMPT, torch.tensor([[a]])], 1)) for a in range(VOCAB)])
    return joint.reshape(-1).double().numpy()


def generated_first_two(target, drafters, seeds, kwargs_for_seed) -> np.ndarray:
    """Counts ``[V·V]`` of the first two tokens ``hs.generate`` samples after PROMPT, one draw per seed, with the
    generate keywords ``kwargs_for_seed(seed)`` (so a test can vary the policy or draft shape per draw)."""
    counts = np.zeros(VOCAB * VOCAB, dtype=np.int64)
    for seed in seeds:
        out = hs.generate(target, PROMPT, drafters=drafters, do_sample=True, seed=seed, eos_token_id=None,
                          **kwargs_for_seed(seed))
        a, b = out.sequences[0, PROMPT.shape[1]: PROMPT.shape[1] + 2].tolist()
        counts[a * VOCAB + b] += 1
    return counts
