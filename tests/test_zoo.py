"""The embedded model zoo: offline loading, tokenizer, domain experts that win their domain, the training smoke run."""
from __future__ import annotations

import gzip
import json
import time

import pytest
import torch

from hedgespec_fast import zoo
from hedgespec_fast.zoo import corpora, evaluate


@pytest.fixture(scope="module")
def loaded(monkeypatch_module):
    started = time.perf_counter()
    tokenizer, target, drafters = zoo.load()
    print(f"zoo.load() took {time.perf_counter() - started:.2f}s")
    return tokenizer, target, drafters


@pytest.fixture(scope="module")
def monkeypatch_module():
    # No hub is ever contacted: make any attempt fail loudly instead of hanging.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield patch


def test_load_returns_experts_then_generic(loaded):
    tokenizer, target, drafters = loaded
    assert list(drafters) == list(zoo.DOMAINS) + [zoo.GENERIC]
    assert list(zoo.manifest()["domains"]) == list(zoo.DOMAINS)
    for model in [target, *drafters.values()]:
        assert not model.training
        assert model.config.vocab_size == target.config.vocab_size == len(tokenizer)
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied head
    assert target.config.num_hidden_layers > max(d.config.num_hidden_layers for d in drafters.values())


def test_drafters_are_distinct_and_independent(loaded):
    tokenizer, target, drafters = loaded
    ids = tokenizer("SELECT name FROM users WHERE id = 1;\n", return_tensors="pt").input_ids
    with torch.no_grad():
        outputs = {name: d(input_ids=ids).logits for name, d in drafters.items()}
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outputs[a], outputs[b]), f"{a} and {b} are the same model"
    # The embedding is shared on disk only: every model owns its parameters.
    pointers = {m.model.embed_tokens.weight.data_ptr() for m in [target, *drafters.values()]}
    assert len(pointers) == len(drafters) + 1
    assert torch.equal(drafters["python"].model.embed_tokens.weight, target.model.embed_tokens.weight)


def test_generate_works_for_target_and_drafters(loaded):
    tokenizer, target, drafters = loaded
    ids = tokenizer("def main(argv=None):\n", return_tensors="pt").input_ids
    for model in [target, drafters["python"], drafters[zoo.GENERIC]]:
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
        assert out.shape == (1, ids.shape[1] + 8) or out[0, -1].item() == tokenizer.eos_token_id


@pytest.mark.parametrize("text", [
    "", "x", "    def f(self):\n\treturn  {'a': 1}\n", "/* comment */\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
    "naïve café — 日本語 🙂\r\n", "SELECT * FROM t;  -- trailing  spaces   \n\n\n",
])
def test_tokenizer_round_trips(loaded, text):
    tokenizer = loaded[0]
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text


def test_tokenizer_special_tokens(loaded):
    tokenizer = loaded[0]
    assert {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} == {0, 1, 2}
    assert tokenizer("abc").input_ids == tokenizer("abc", add_special_tokens=False).input_ids  # no implicit bos
    assert tokenizer.decode([tokenizer.eos_token_id]) == tokenizer.eos_token


def test_heldout_prompts():
    prompts = zoo.heldout_prompts(n=3, prompt_tokens=48)
    assert list(prompts) == list(zoo.DOMAINS)
    tokenizer = zoo._tokenizer(str(zoo.ZOO_DIR))
    for domain, texts in prompts.items():
        assert len(texts) == 3 and len(set(texts)) == 3, domain
        for text in texts:
            assert 40 <= len(tokenizer(text).input_ids) <= 48
    assert zoo.heldout_prompts("sql", n=4, seed=1) == zoo.heldout_prompts("sql", n=4, seed=1)
    assert zoo.heldout_prompts("sql", n=4, seed=1) != zoo.heldout_prompts("sql", n=4, seed=2)
    with pytest.raises(ValueError):
        zoo.heldout_prompts("klingon")


def test_heldout_snippets_come_from_heldout_files():
    for domain in zoo.DOMAINS:
        path = zoo.ZOO_DIR / "data" / "heldout" / f"{domain}.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) >= 20
        for line in lines:
            assert line["domain"] == domain
            # The split is a pure function of the key: these keys are held out on every machine.
            assert corpora.is_heldout(line["key"], 0.1), line["key"]


def test_each_expert_wins_its_own_domain(loaded):
    """Teacher-forced greedy ÂL (K=5) on held-out text: the domain's expert beats every other drafter."""
    tokenizer, target, drafters = loaded
    texts = zoo.heldout_texts(n=8)
    matrix = evaluate.acceptance_matrix(tokenizer, target, drafters, texts, draft_len=5, max_tokens=256)
    print("\n" + matrix.to_markdown("greedy_al"))
    assert matrix.winners("greedy_al") == {d: d for d in zoo.DOMAINS}
    for domain in zoo.DOMAINS:
        assert matrix.margin(domain, "greedy_al") > 0.15, domain


def test_expected_accepted_length_estimator():
    gamma = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    al = evaluate.expected_accepted_length(gamma, draft_len=3)
    # windows: [1,1,0] → 1+1+1+0, [1,0,1] → 2, [0,1,1] → 1, [1,1,1] → 4, [1,1,1] → 4
    assert al.tolist() == [[3.0, 2.0, 1.0, 4.0, 4.0]]
    assert evaluate.expected_accepted_length(torch.full((2, 10), 0.5), 5).allclose(torch.tensor(1 + 0.5 + 0.25 + 0.125
                                                                                               + 0.0625 + 0.03125))


def test_split_is_by_file_and_deterministic(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i}.txt").write_text(f"file {i}\n" + "some words here\n" * 30)
    with gzip.open(tmp_path / "g.txt.gz", "wt") as handle:
        handle.write("gzipped text\n" * 40)
    source = corpora.parse_corpus_spec(f"mine={tmp_path}/*.txt,{tmp_path}/*.gz")
    first = corpora.load_domain(source, heldout_fraction=0.2)
    second = corpora.load_domain(source, heldout_fraction=0.2)
    train_keys = {d.key for d in first.train}
    heldout_keys = {d.key for d in first.heldout}
    assert len(train_keys) + len(heldout_keys) == 41 and not train_keys & heldout_keys
    assert heldout_keys == {d.key for d in second.heldout} and len(heldout_keys) >= 2
    assert any(d.text.startswith("gzipped") for d in first.train + first.heldout)


def test_man_page_reflow():
    rendered = ("LS(1)          User Commands          LS(1)\n\nNAME\n       ls - list directory\n       contents\n\n"
                "OPTIONS\n       -a, --all\n              do not ignore entries\n\nGNU coreutils   2022   LS(1)\n")
    assert corpora.reflow_man_text(rendered) == ("NAME\n\nls - list directory contents\n\nOPTIONS\n\n"
                                                 "-a, --all\n       do not ignore entries\n")


def test_train_quick_smoke(tmp_path):
    """The full pipeline (corpora → tokenizer → target → drafters → export → evaluation) on tiny settings."""
    from hedgespec_fast.zoo import train

    notes = tmp_path / "notes"
    notes.mkdir()
    words = "the target verifies the drafted tokens while the learner moves its weights to the best drafter".split()
    generator = torch.Generator().manual_seed(0)
    for i in range(12):
        picks = torch.randint(len(words), (3000,), generator=generator).tolist()
        (notes / f"n{i}.txt").write_text("\n".join(" ".join(words[p] for p in picks[j:j + 12])
                                                   for j in range(0, 3000, 12)))
    out = tmp_path / "run"
    started = time.perf_counter()
    result = train.main(["--quick", "--out", str(out), "--domains", "python", "--corpus", f"notes={notes}/*.txt"])
    print(f"quick zoo training took {time.perf_counter() - started:.1f}s")
    assert set(result["winners"]) == {"python", "notes"}
    tokenizer, target, drafters = zoo.load(path=out / "export")
    assert list(drafters) == ["python", "notes", zoo.GENERIC]
    assert (out / "export" / "data" / "heldout" / "notes.jsonl").exists()
