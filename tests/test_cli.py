"""The CLI as a user types it, in a subprocess."""

from __future__ import annotations

import json

import yaml

from conftest import run_cli


def test_help_lists_stages():
    r = run_cli("--help")
    assert r.returncode == 0
    for stage in ("synth", "sft", "gold-score", "demo"):
        assert stage in r.stdout
    m = run_cli("--help", module=True)  # python -m rlhfkit
    assert m.returncode == 0 and "sft" in m.stdout


def test_stage_help_documents_every_key():
    r = run_cli("sft", "--help")
    assert r.returncode == 0
    for key in ("learning_rate", "gradient_accumulation_steps", "completion_only_loss", "resume"):
        assert key in r.stdout
    assert "Train on completion tokens only" in r.stdout  # the field's docstring is the help text


def test_bad_config_is_one_clear_error(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tmp_path), "data": "x.jsonl", "learning_rate": -1,
                                   "batch": 3}))
    r = run_cli("sft", "--config", str(cfg), "per_device_batch_size=0")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    for needle in ("learning_rate", "batch", "per_device_batch_size", str(cfg), "command line"):
        assert needle in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


def test_missing_data_file_is_named(world, tmp_path):
    r = run_cli("sft", f"model={world / 'base'}", f"data={tmp_path / 'nope.jsonl'}",
                f"output_dir={tmp_path / 'o'}")
    assert r.returncode == 2 and "nope.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_sft_from_yaml_with_overrides(world, tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(world / "base"), "data": str(world / "sft.jsonl"),
                                   "max_steps": 50, "per_device_batch_size": 4, "max_length": 48}))
    out = tmp_path / "run"
    r = run_cli("sft", "--config", str(cfg), "max_steps=2", f"output_dir={out}", "eval_fraction=0.02")
    assert r.returncode == 0, r.stderr[-2000:]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["max_steps"] == 2 and resolved["per_device_batch_size"] == 4  # override beat the file
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and (out / "final" / "model.safetensors").is_file()


def test_gold_score_cli(tmp_path):
    src = tmp_path / "c.jsonl"
    rows = [{"prompt": "review of the film x :", "completion": " the film was wonderful ."},
            {"prompt": "review of the film x :", "completion": " the film was terrible ."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    r = run_cli("gold-score", f"input={src}", f"output={out}")
    assert r.returncode == 0, r.stderr
    scored = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert scored[0]["gold_reward"] > scored[1]["gold_reward"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completion": 3}) + "\n")
    r = run_cli("gold-score", f"input={bad}", f"output={tmp_path / 'x.jsonl'}")
    assert r.returncode == 2 and "bad.jsonl" in r.stderr and "row 1" in r.stderr and "completion" in r.stderr


def test_library_noise_only_with_verbose(tmp_path):
    """A stage prints its progress and result, not transformers' load report (the fresh reward
    head is "MISSING"), accelerate's "Removed shared tensor" on every tied-embedding checkpoint, or
    alembic's migration steps; `-v` (after the stage name too) shows them."""
    from rlhfkit.testing.conformance import build_model, build_tokenizer

    model, tok = build_model("gpt2", tmp_path / "m"), build_tokenizer("chatml", tmp_path / "t")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"question {i}?", "chosen": "a good answer.",
                                         "rejected": "no."})
                             + "\n" for i in range(8)))
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": "an answer."}) + "\n"
                           for i in range(8)))
    common = [f"model={model}", f"tokenizer={tok}", "max_steps=2", "save_every=1", "per_device_batch_size=4",
              "eval_fraction=0"]
    # reward: a fresh score head (load report); sft: GPT-2's tied embeddings in a checkpoint
    for stage, extra, noise in (("reward", [f"data={prefs}", "normalize=none"], "LOAD REPORT"),
                                ("sft", [f"data={sft}"], "Removed shared tensor")):
        quiet = run_cli(stage, *common, *extra, f"output_dir={tmp_path / stage / 'q'}")
        loud = run_cli(stage, *common, *extra, f"output_dir={tmp_path / stage / 'v'}", "-v")
        assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:]
        assert noise not in quiet.stdout + quiet.stderr, quiet.stderr[-3000:]
        assert noise in loud.stdout + loud.stderr, (stage, loud.stderr[-3000:])
        assert str(tmp_path / stage / "q" / "final") in quiet.stdout  # the result is printed

    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"answer {j}"}) + "\n"
                                 for i in range(3) for j in range(2)))
    collect = ["collect", f"store={tmp_path / 'fb.db'}", "project=p", f"responses={responses}",
               f"output_dir={tmp_path / 'c'}"]
    r = run_cli(*collect)
    assert r.returncode == 0 and "alembic" not in (r.stdout + r.stderr).lower(), r.stderr[-2000:]
