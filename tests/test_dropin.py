"""The drop-in: hs.attach(model, drafters) makes existing generate() code speculative — threaded
TextIteratorStreamer, TextStreamer, pipeline() — with streamers fed and ended, output unchanged; hs.detach undoes
it; a streamer handed to a raw custom_generate call is routed, not dropped; calls speculation cannot serve fall back
to transformers' own decoding, saying why."""
from __future__ import annotations

import logging
import threading

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer, pipeline

import hedgespec_fast as hs
from hedgespec_fast import zoo


@pytest.fixture(scope="module")
def zoo_models():
    tokenizer, target, drafters = zoo.load()
    text = zoo.heldout_prompts("python", n=1, prompt_tokens=32)[0]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return tokenizer, target, list(drafters.values())[:3] + [hs.NGramDrafter()], text, ids


GEN = dict(max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)


def _threaded(fn, streamer, **kwargs):
    worker = threading.Thread(target=fn, kwargs=dict(streamer=streamer, **kwargs), daemon=True)
    worker.start()
    text = "".join(streamer)  # ends only if the streamer's end() is called
    worker.join(timeout=120)
    assert not worker.is_alive()
    return text


def test_attach_runs_existing_generate_code_speculatively(zoo_models, monkeypatch):
    tokenizer, target, pool, _, ids = zoo_models
    plain = target.generate(ids, **GEN)
    expected = tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
    calls = []
    monkeypatch.setattr(hs.hf, "speculative_decode", _spy(hs.hf.speculative_decode, calls))
    hs.attach(target, drafters=pool, objective="mat")
    try:
        assert torch.equal(target.generate(ids, **GEN), plain)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
        assert _threaded(target.generate, streamer, input_ids=ids, **GEN) == expected
        seen = []

        class Collect(TextStreamer):
            def on_finalized_text(self, text, stream_end=False):
                seen.append((text, stream_end))

        target.generate(ids, streamer=Collect(tokenizer, skip_prompt=True), **GEN)
        assert "".join(t for t, _ in seen) == expected and seen[-1][1]  # fed, then ended
    finally:
        hs.detach(target)
    assert len(calls) == 3, "every attached call must run speculatively"
    assert "generate" not in target.__dict__ and not hasattr(target, "_hedgespec_attached")
    assert torch.equal(target.generate(ids, **GEN), plain)
    assert len(calls) == 3  # detached: transformers' own decoding again


def _spy(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_pipeline_with_attach_and_with_custom_generate(zoo_models):
    tokenizer, target, pool, text, ids = zoo_models
    pipe = pipeline("text-generation", model=target, tokenizer=tokenizer)
    kw = dict(max_new_tokens=24, do_sample=False, return_full_text=False)
    plain = pipe(text, **kw)[0]["generated_text"]
    assert pipe(text, custom_generate=hs.custom_generate, drafters=pool, **kw)[0]["generated_text"] == plain
    hs.attach(target, drafters=pool)
    try:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
        streamed = _threaded(pipe, streamer, text_inputs=text, **kw)
        assert pipe(text, **kw)[0]["generated_text"] == plain == streamed
    finally:
        hs.detach(target)


def test_streamer_to_a_raw_custom_generate_is_routed(zoo_models):
    """transformers drops streamer= for a callable custom_generate; hedgespec routes it instead of hanging."""
    tokenizer, target, pool, _, ids = zoo_models
    expected = tokenizer.decode(target.generate(ids, **GEN)[0, ids.shape[1]:], skip_special_tokens=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
    got = _threaded(target.generate, streamer, input_ids=ids, custom_generate=hs.custom_generate, drafters=pool,
                    **GEN)
    assert got == expected


def test_unsupported_calls_fall_back_and_say_why(zoo_models, caplog):
    tokenizer, target, pool, _, ids = zoo_models
    batch = torch.cat([ids, ids])
    plain = target.generate(batch, **GEN)
    hs.attach(target, drafters=pool)
    try:
        with caplog.at_level(logging.WARNING, logger="hedgespec_fast.hf"):
            out = target.generate(batch, **GEN)
        assert torch.equal(out, plain)
        assert "batch size 2" in caplog.text
    finally:
        hs.detach(target)


def test_attach_checks_its_arguments(zoo_models):
    _, target, pool, _, _ = zoo_models
    with pytest.raises(TypeError, match="unknown option"):
        hs.attach(target, drafters=pool, draftlen=3)
    with pytest.raises(ValueError, match="drafters"):
        hs.attach(target, drafters=[])
    assert hs.detach(target) is target  # detaching a model that is not attached is a no-op
