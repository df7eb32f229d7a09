"""The `hedgespec` command: env, generate with your own local models, demo and bench on the zoo (smoke runs)."""
from __future__ import annotations

import json

import pytest
from tiny import noisy_copy, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hedgespec_fast import cli


def test_env(capsys):
    cli.main(["env"])
    out = capsys.readouterr().out
    assert "torch" in out and "kernel backend" in out and "hedgespec" in out


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    """A tiny target and drafter saved as HF folders, with a word-level tokenizer over their 97 ids."""
    root = tmp_path_factory.mktemp("models")
    vocab = {f"w{i}": i for i in range(97)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w1")
    target = tiny_model("llama")
    for name, model in (("target", target), ("drafter", noisy_copy(target, 0.05, 1))):
        model.save_pretrained(root / name)
        fast.save_pretrained(root / name)
    return root


def test_generate_with_local_models(local_models, capsys):
    cli.main(["generate", "--target", str(local_models / "target"), "--drafter", str(local_models / "drafter"),
              "--prompt", "w5 w6 w7 w8", "--max-new-tokens", "12", "--policy", "hedgespec", "--ignore-eos"])
    out = capsys.readouterr().out
    assert "12 tokens in" in out and "MAT" in out and "drafter=" in out


def _zoo_or_skip():
    from hedgespec_fast import zoo

    try:
        zoo.manifest()
    except FileNotFoundError:
        pytest.skip("no trained zoo in this checkout")


def test_demo_smoke(tmp_path, capsys):
    _zoo_or_skip()
    cli.main(["demo", "--per-domain", "1", "--prompt-tokens", "16", "--max-new-tokens", "6", "--threads", "1",
              "--plot", str(tmp_path / "demo.png"), "--json", str(tmp_path / "demo.json")])
    report = json.loads((tmp_path / "demo.json").read_text())
    assert {"hedgespec", "oracle", "ucbspec", "fixed:0"} <= set(report["policies"])
    for entry in report["policies"].values():
        assert {"mean_accepted", "tokens_per_s", "rounds", "drafter_counts"} <= set(entry)
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert "MAT by domain" in capsys.readouterr().out


def test_bench_smoke_and_resume(tmp_path):
    _zoo_or_skip()
    argv = ["bench", "--workloads", "mixed", "--policies", "hedgespec,fixed:0,oracle,target", "--per-domain", "1",
            "--prompt-tokens", "16", "--max-new-tokens", "6", "--out", str(tmp_path), "--threads", "1"]
    cli.main(argv)
    assert (tmp_path / "summary.json").exists() and (tmp_path / "results.md").exists()
    lines = (tmp_path / "record.jsonl").read_text().splitlines()
    assert len(lines) == 4
    cli.main(argv)  # everything is recorded: the second run only re-reads it
    assert (tmp_path / "record.jsonl").read_text().splitlines() == lines
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]["workloads"]["mixed"]
    assert summary["target"]["mean_accepted"] == pytest.approx(1.0)


def test_bench_pool_size_sweep(tmp_path):
    _zoo_or_skip()
    argv = ["bench", "--workloads", "mixed", "--policies", "hedgespec,oracle", "--per-domain", "1",
            "--prompt-tokens", "16", "--max-new-tokens", "4", "--pool-sizes", "2,9", "--out", str(tmp_path),
            "--threads", "1"]
    cli.main(argv)
    sweep = json.loads((tmp_path / "summary.json").read_text())["pool_sizes"]
    assert set(sweep) == {"2", "9"}
    assert len(sweep["9"]["hedgespec"]["drafter_counts"]) == 9  # 6 zoo drafters, 2 noisy copies, n-gram
    assert (tmp_path / "pool_sizes.png").stat().st_size > 0
    assert "pool-size sweep" in (tmp_path / "results.md").read_text()


def test_bench_reads_the_oracle_off_the_fixed_runs():
    """With every fixed drafter in the run the oracle is not rerun: its rows are the fixed rows the rule of
    ``policy="oracle"`` picks (best MAT, then fewer rounds, then lower index), identical to running it; the
    fastest fixed drafter per prompt comes beside it."""
    _zoo_or_skip()
    from hedgespec_fast import benchmark, zoo

    tokenizer, target, drafters = zoo.load()
    drafters = dict(list(drafters.items())[:2])
    prompts = {d: zoo.heldout_prompts(d, n=1, prompt_tokens=16, seed=0) for d in ("python", "sql")}
    workloads = {"mixed": benchmark.workload("mixed", prompts, seed=0)}
    fixed = [f"fixed:{i}" for i in range(3)]
    kw = dict(max_new_tokens=12, draft_len=4, show_progress=False)
    derived = benchmark.run(target, drafters, tokenizer, workloads, fixed + ["oracle"], **kw)["mixed"]
    ran = benchmark.run(target, drafters, tokenizer, workloads, ["oracle"], **kw)["mixed"]
    assert [r["oracle_choice"] for r in derived["oracle"]] == [r["oracle_choice"] for r in ran["oracle"]]
    assert [r["tokens"] for r in derived["oracle"]] == [r["tokens"] for r in ran["oracle"]]
    assert [r["rounds"] for r in derived["oracle"]] == [r["rounds"] for r in ran["oracle"]]
    fastest = derived[benchmark.FASTEST]
    for j, row in enumerate(fastest):
        per_token = [derived[f][j]["wall_s"] / derived[f][j]["new_tokens"] for f in fixed]
        assert row["oracle_choice"] == min(range(3), key=per_token.__getitem__)


def test_bench_variant_leaving_out_a_drafter():
    from hedgespec_fast.headtohead import variant_method

    method = variant_method("hedgespec@eval_budget=0.2~ngram-1~qwen-1.5b-int8", ["qwen-1.5b-int8", "ngram", "ngram-1"])
    assert (method.policy, method.without) == ("hedgespec@eval_budget=0.2", ("ngram-1", "qwen-1.5b-int8"))
    assert variant_method("hedgespec", ["ngram"]).without == ()
    with pytest.raises(SystemExit, match="does not have.*'ngram-2'"):
        variant_method("hedgespec~ngram-2", ["ngram", "ngram-1"])
