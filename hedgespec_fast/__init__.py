"""hedgespec-fast: lossless speculative decoding that learns, online, which of several drafters to use.

>>> import hedgespec_fast as hs
>>> out = hs.generate(target, input_ids, drafters=[small_a, small_b, hs.NGramDrafter()], max_new_tokens=128)
>>> out.sequences, out.stats.mean_accepted, out.stats.drafter_counts
>>> target.generate(input_ids, custom_generate=hs.custom_generate, drafters=[small_a, hs.NGramDrafter()])
>>> hs.attach(target, drafters=[small_a, hs.NGramDrafter()])   # existing model.generate / pipeline code speculates
"""
from .config import SpecConfig
from .drafters import HFDrafter, NGramDrafter
from .hf import SpeculativeOutput, attach, custom_generate, detach, generate
from .learners import (
    POLICIES,
    EXP3Spec,
    ExpertPolicy,
    Fixed,
    HedgeSpecSelector,
    MetaSDUCB,
    Policy,
    Random,
    TapOut,
    UCBSpec,
    make_policy,
)
from .onednn import apply_onednn_linears
from .stats import GenerationStats
from .trees import DynamicTree, MultiDraft, StaticTree

__version__ = "0.2.0"

__all__ = [
    "generate", "custom_generate", "attach", "detach", "SpeculativeOutput", "SpecConfig", "GenerationStats",
    "POLICIES", "make_policy",
    "HFDrafter", "NGramDrafter", "Policy", "HedgeSpecSelector", "ExpertPolicy", "UCBSpec", "EXP3Spec", "MetaSDUCB",
    "TapOut", "Fixed", "Random", "DynamicTree", "StaticTree", "MultiDraft", "apply_onednn_linears",
]
