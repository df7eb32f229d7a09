"""Drop-in ``generate()`` and the transformers ``custom_generate`` adapter.

Both run through ``target.generate(..., custom_generate=...)``: transformers prepares the generation config, the
logits processors (temperature, top-k, top-p, min-new-tokens, …) and the stopping criteria exactly as for plain
``generate()``, and the speculative loop applies that very list to target and drafters. Losslessness against
``target.generate()`` therefore holds by construction, whatever options the user passes.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
from dataclasses import dataclass

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from .config import SpecConfig, split_policy_options
from .decoder import SpeculativeDecoder
from .learners import Oracle, make_policy
from .logits import LogitsWarp
from .modeling import context_length, param_device_dtype, vocab_size
from .pool import DrafterPool
from .stats import GenerationStats


@dataclass
class SpeculativeOutput:
    """``sequences``: LongTensor ``[1, prompt + new]``; ``stats``: :class:`GenerationStats`."""

    sequences: torch.Tensor
    stats: GenerationStats


def _eos_ids(generation_config, stopping_criteria) -> set[int]:
    ids: set[int] = set()
    for crit in stopping_criteria or []:
        if isinstance(crit, EosTokenCriteria):
            ids.update(int(t) for t in torch.as_tensor(crit.eos_token_id).reshape(-1).tolist())
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is not None and not ids:
        ids.update(int(t) for t in torch.as_tensor(eos).reshape(-1).tolist())
    return ids


def _validate(model, input_ids, pool: DrafterPool, max_length: int, real_vocab: int | None = None) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise NotImplementedError(
            f"hedgespec-fast supports batch size 1 for now; got input_ids of shape {tuple(input_ids.shape)}: "
            "call generate once per prompt"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: speculative decoding needs at least one token")
    device, dtype = param_device_dtype(model)
    if input_ids.device != device:
        raise ValueError(f"input_ids are on {input_ids.device} but the target is on {device}")
    target_ctx = context_length(model)
    if target_ctx is not None and max_length > target_ctx:
        raise ValueError(f"the target supports {target_ctx} positions but this generation needs {max_length} "
                         "(prompt + max_new_tokens)")
    pool.check_compatible(vocab_size(model), device, dtype, max_length, real_vocab)


def speculative_decode(model, input_ids, logits_processor, stopping_criteria, generation_config, drafters,
                       config: SpecConfig, streamer=None, nvtx: bool | None = None,
                       tokenizer=None) -> SpeculativeOutput:
    """The speculative loop on what ``generate()`` prepared. Resolves the oracle by running every fixed drafter.

    ``nvtx`` (default: the environment variable ``HEDGESPEC_NVTX=1``) wraps each phase in an NVTX range for Nsight.
    """
    if nvtx is None:
        nvtx = os.environ.get("HEDGESPEC_NVTX", "0") == "1"
    pool = DrafterPool(drafters, stack=config.stack_drafters if config.tree is None else False)
    max_length = int(generation_config.max_length)
    _validate(model, input_ids, pool, max_length, None if tokenizer is None else len(tokenizer))
    policy = make_policy(config.policy, len(pool), config, device=input_ids.device)
    extra_stops = [c for c in (stopping_criteria or []) if not isinstance(c, (EosTokenCriteria, MaxLengthCriteria))]
    common = dict(warp=LogitsWarp(logits_processor), do_sample=bool(generation_config.do_sample),
                  max_length=max_length, eos_ids=_eos_ids(generation_config, stopping_criteria),
                  stopping=extra_stops, nvtx=nvtx)
    if isinstance(policy, Oracle):
        return _oracle(model, input_ids, pool, config, streamer, common)
    decoder = SpeculativeDecoder(model, pool, policy, config, streamer=streamer,
                                 policy_outlives_call=not isinstance(config.policy, str), **common)
    sequences, stats = decoder.run(input_ids)
    return SpeculativeOutput(sequences, stats)


def _oracle(model, input_ids, pool, config, streamer, common) -> SpeculativeOutput:
    """Best fixed drafter in hindsight for this prompt: highest MAT, then fewer rounds, then lower index."""
    runs = []
    for index in range(len(pool)):
        fixed = SpecConfig.from_kwargs(config, policy=f"fixed:{index}")
        decoder = SpeculativeDecoder(model, pool, make_policy(fixed.policy, len(pool), fixed), fixed, **common)
        runs.append(decoder.run(input_ids))
    best = min(range(len(runs)), key=lambda i: (-runs[i][1].mean_accepted, runs[i][1].rounds, i))
    sequences, stats = runs[best]
    stats.policy, stats.oracle_choice = "oracle", best
    if streamer is not None:
        streamer.put(sequences[0, input_ids.shape[1]:].cpu())
        streamer.end()
    return SpeculativeOutput(sequences, stats)


def _dropped_streamer():
    """The ``streamer=`` that transformers' ``generate`` took but did not pass on to a callable ``custom_generate``
    (it keeps only keywords that its own decoding methods do not have), read from that ``generate`` call's frame.
    transformers has already put the prompt into it; the rounds and ``end()`` are ours. Without this a threaded
    ``TextIteratorStreamer`` would wait forever."""
    frame = inspect.currentframe()
    try:
        caller = frame.f_back
        for _ in range(6):
            caller = caller.f_back if caller is not None else None
            if caller is None:
                return None
            code = caller.f_code
            if code.co_name == "generate" and "transformers" in code.co_filename and "streamer" in caller.f_locals:
                return caller.f_locals["streamer"]
        return None
    finally:
        del frame


def _spec_config(spec_config, policy, draft_len, tree, seed, objective=None) -> SpecConfig:
    policy, options = split_policy_options(policy)  # "hedgespec@objective=mat" → policy + options
    given = dict(policy=policy, draft_len=draft_len, tree=tree, seed=seed, objective=objective)
    overrides = {k: v for k, v in given.items() if v is not None}
    return SpecConfig.from_kwargs(spec_config, **{**overrides, **options})


def custom_generate(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                    streamer=None, drafters=None, policy=None, draft_len=None, tree=None, seed=None, spec_config=None,
                    objective=None, spec_streamer=None, spec_tokenizer=None, return_spec_output=False,
                    **model_kwargs):
    """``target.generate(input_ids, custom_generate=hs.custom_generate, drafters=[...], ...)``.

    Extra ``generate`` keywords: ``drafters`` (required), ``policy`` (a name, with options as
    ``"hedgespec@objective=mat"``), ``draft_len``, ``tree``, ``seed``, ``objective``,
    ``spec_config`` (a :class:`SpecConfig`), ``spec_tokenizer`` (the tokenizer, to accept drafters whose vocabulary
    differs from the target's only by padding), ``spec_streamer`` (transformers does not hand ``streamer=`` to a
    custom_generate callable, so pass the streamer under this name to get tokens as they are emitted).
    Returns the sequences (or a ``GenerateDecoderOnlyOutput`` with ``return_dict_in_generate=True``).
    """
    if drafters is None:
        raise ValueError(
            "custom_generate needs drafters=[...] (models sharing the target's vocabulary or hs.NGramDrafter())"
        )
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool((mask == 1).all()):
        raise NotImplementedError(
            "the attention mask has zeros: padded prompts are not supported yet. If the prompt is not padded, "
            "transformers inferred padding because the pad token "
            f"({getattr(generation_config, 'pad_token_id', None)}) occurs in it (chat templates often contain it): "
            "pass attention_mask=torch.ones_like(input_ids)")
    for flag in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
        if getattr(generation_config, flag, False):
            raise NotImplementedError(f"{flag}=True is not supported by hedgespec-fast's speculative generation")
    config = _spec_config(spec_config, policy, draft_len, tree, seed, objective)
    wanted = getattr(generation_config, "cache_implementation", None)
    if wanted == "static" and config.cache_implementation is None:  # transformers' own option, honoured
        config = SpecConfig.from_kwargs(config, cache_implementation="static")
    elif wanted not in (None, "static", "dynamic"):
        logger.warning("hedgespec: cache_implementation=%r is not supported; using a dynamic cache", wanted)
    if wanted is not None:  # transformers made a cache for us (unused: hedgespec keeps its own); <5 would choke on it
        model.__dict__.pop("_cache", None)  # next call, reading a batch size that lazy layers never set
    # transformers puts the prompt into a streamer, then hands the callable everything but the streamer
    streamer = spec_streamer or streamer or _dropped_streamer()
    out = speculative_decode(model, input_ids, logits_processor, stopping_criteria, generation_config, drafters,
                             config, streamer=streamer, tokenizer=spec_tokenizer)
    if return_spec_output:
        return out
    if getattr(generation_config, "return_dict_in_generate", False):
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        result = GenerateDecoderOnlyOutput(sequences=out.sequences)
        result["spec_stats"] = out.stats
        return result
    return out.sequences


def generate(target, input_ids, drafters, max_new_tokens: int = 128, policy="hedgespec", draft_len: int | None = None,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, tree=None,
             seed: int | None = None, streamer=None, spec_config: SpecConfig | None = None,
             objective: str | None = None, tokenizer=None, **generate_kwargs) -> SpeculativeOutput:
    """Speculative generation with online drafter selection; output identical to ``target.generate()`` (greedy) or
    distributed as its sampling (``do_sample=True``).

    Parameters
    ----------
    target : any ``AutoModelForCausalLM``.
    input_ids : LongTensor ``[1, L]`` on the target's device.
    drafters : models sharing the target's vocabulary and/or drafter objects (``hs.NGramDrafter()``).
    max_new_tokens : exact cap on new tokens (EOS may stop earlier).
    policy : a name from ``hs.POLICIES`` (options may follow: ``"hedgespec@objective=mat,eval_every=4"`` sets those
        :class:`SpecConfig` fields) or a policy object (reuse it across calls for a warm start).
    draft_len : K, tokens drafted per round; under the throughput objective the upper bound K_max of the lengths the
        learner chooses among (default 5 for ``"mat"``, 8 for ``"throughput"``).
    do_sample, temperature, top_k, top_p : sampling, applied identically to target and drafters.
    tree : None (chain) or a draft tree: ``"depth=5,topk=4,total=32"`` (EAGLE-2 dynamic), ``"static:depth=3,topk=2"``,
        ``"paths:[[0],[1],[0,0]]"``, multi-draft ``"chains:k=4"`` / ``"drafters:k=3"`` / ``"shared:total=32"``, or a
        shape object (:mod:`hedgespec_fast.trees`). Needs ``sdpa`` or ``eager`` attention.
    seed : seeds sampling and the policy's randomness.
    streamer : e.g. ``TextStreamer``; receives the prompt, then tokens as rounds emit them.
    spec_config : a :class:`SpecConfig` for the other options (loss, level, choice, eval_every, backend, …).
    objective : ``"throughput"`` (default: expected tokens per second of each (drafter, K), from measured costs) or
        ``"mat"`` (HedgeSpec's mean accepted tokens per target call at a fixed K).
    tokenizer : optional; with it, drafters whose output size differs from the target's are accepted when the
        tokenizer fits in both (padding rows), without it when the sizes are within 1 % (see ``HFDrafter``).
    generate_kwargs : anything else ``generate()`` takes (``min_new_tokens``, ``eos_token_id``, ``repetition_penalty``,
        ``stopping_criteria``, ``logits_processor``, …).

    Returns
    -------
    SpeculativeOutput with ``sequences [1, L + new]`` and ``stats``.
    """
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
    return target.generate(  # transformers puts the prompt into the streamer; the rounds go through spec_streamer
        input_ids, custom_generate=custom_generate, drafters=drafters, policy=policy, draft_len=draft_len, tree=tree,
        seed=seed, spec_config=spec_config, objective=objective, streamer=streamer, spec_streamer=streamer,
        spec_tokenizer=tokenizer, return_spec_output=True,
        max_new_tokens=max_new_tokens, do_sample=do_sample, **sampling, **generate_kwargs,
    )


# -- the drop-in: model.generate becomes speculative ------------------------------------------------------------------
logger = logging.getLogger(__name__)
_SPEC_KEYS = ("policy", "draft_len", "tree", "seed", "spec_config", "objective")


def _why_not_speculative(args, kwargs) -> str | None:
    """Why a ``generate`` call cannot run speculatively (then it runs as transformers would), or None."""
    ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return "the prompt is not a [batch, length] tensor of token ids"
    if ids.shape[0] != 1:
        return f"batch size {ids.shape[0]} (speculation here is batch size 1)"
    config = kwargs.get("generation_config")
    beams = kwargs.get("num_beams", getattr(config, "num_beams", 1) if config is not None else 1)
    if (beams or 1) > 1:
        return "beam search"
    for key in ("assistant_model", "prompt_lookup_num_tokens", "custom_generate"):
        if kwargs.get(key) is not None:
            return f"{key}= asks for another decoding method"
    mask = kwargs.get("attention_mask")
    if mask is not None and not bool((mask == 1).all()):
        return "a padded prompt"
    return None


def attach(model, drafters, **spec_options):
    """Make ``model.generate`` speculative: existing code — ``model.generate(…, streamer=TextIteratorStreamer(…))``
    in a thread, ``pipeline("text-generation", model=model)``, ``TextStreamer`` — runs through hedgespec with its
    streamers fed and ended, output identical to what it produced before (greedy) or distributed like it. The
    convention of Liger-Kernel's ``apply_liger_kernel_to_*``: patch once, call as before, :func:`detach` to undo.

    Calls speculation cannot serve (batch > 1, beam search, padded prompts, another assistant) run as transformers
    would, with a warning naming the reason, so nothing that worked stops working.

    Parameters
    ----------
    model : a transformers causal LM (the target).
    drafters : as for :func:`generate`.
    spec_options : ``policy``, ``draft_len``, ``tree``, ``seed``, ``spec_config``, ``objective``, ``tokenizer``.

    Returns
    -------
    The same model.
    """
    unknown = set(spec_options) - set(_SPEC_KEYS) - {"tokenizer"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for hs.attach; known: {sorted(_SPEC_KEYS)} and tokenizer")
    if drafters is None or len(drafters) == 0:
        raise ValueError("hs.attach needs drafters=[...] (models sharing the target's vocabulary or hs.NGramDrafter())")
    detach(model)
    original = model.generate
    options = {k: v for k, v in spec_options.items() if k != "tokenizer"}
    if spec_options.get("tokenizer") is not None:
        options["spec_tokenizer"] = spec_options["tokenizer"]

    @functools.wraps(original)
    def generate(*args, **kwargs):
        reason = _why_not_speculative(args, kwargs)
        if reason is not None:
            logger.warning("hedgespec: this generate() call runs without speculation: %s", reason)
            return original(*args, **kwargs)
        # transformers puts the prompt into the streamer; the rounds come through spec_streamer
        return original(*args, custom_generate=custom_generate, drafters=drafters,
                        spec_streamer=kwargs.get("streamer"), **{**options, **kwargs})

    model.generate = generate
    model._hedgespec_attached = dict(original=original, drafters=drafters, options=options)
    return model


def detach(model):
    """Undo :func:`attach` (a no-op on a model that is not attached). Returns the model."""
    if getattr(model, "_hedgespec_attached", None) is not None:
        del model.generate  # the instance attribute: the class's generate shows through again
        del model._hedgespec_attached
    return model
