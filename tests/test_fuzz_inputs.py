"""Property-based input hardening (hypothesis): malformed data files (JSONL, CSV, Parquet) for
every data kind, malformed YAML configs and key=value overrides.

Properties: only RlhfkitError subclasses escape (never KeyError, TypeError, ValueError, ...);
the message names the file, and for a single bad row among good ones, that row (by its line /
record number) and the field; with skip_invalid the good rows all survive; a failed write keeps
the file that was there. Derandomized, so the examples are the same on every run.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rlhfkit.config import DPOConfig, PPOConfig, SFTConfig, load_config, parse_overrides
from rlhfkit.data.formats import normalize
from rlhfkit.data.loading import read_records, write_jsonl
from rlhfkit.errors import ConfigError, DataError, RlhfkitError

FUZZ = settings(derandomize=True, deadline=None, max_examples=80, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KINDS = ("sft", "preference", "ranking", "prompt")

# One valid row of each kind, in the plain-string TRL columns.
GOOD = {
    "sft": {"prompt": "review of the lamp :", "completion": " it was fine ."},
    "preference": {"prompt": "review of the lamp :", "chosen": " good .", "rejected": " bad ."},
    "ranking": {"prompt": "review of the lamp :", "responses": [" a .", " b .", " c ."], "ranks": [1, 2, 3]},
    "prompt": {"prompt": "review of the lamp :"},
}

# Values of every JSON type, including the awkward ones (nesting, huge numbers, control chars).
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4)), max_leaves=10)


def row_strategy(kind: str) -> st.SearchStrategy[dict]:
    """A row of ``kind`` with any of its fields replaced by an arbitrary JSON value, dropped, or
    joined by an unknown field."""
    good = GOOD[kind]

    @st.composite
    def build(draw) -> dict:
        row = dict(good)
        for key in list(row):
            action = draw(st.sampled_from(["keep", "keep", "replace", "drop"]))
            if action == "replace":
                row[key] = draw(json_values)
            elif action == "drop":
                del row[key]
        if draw(st.booleans()):
            extra = draw(st.sampled_from(["margin", "tie", "extra", "ranks", "messages", "text"]))
            row[extra] = draw(json_values)
        return row

    return build()


def check_error(err: RlhfkitError, source: Path) -> None:
    assert str(source) in str(err) or source.name in str(err), f"message does not name the file: {err}"


def load(path: Path, kind: str, *, skip_invalid: bool = False):
    rows = read_records(path)
    return normalize(rows, kind, source=str(path), skip_invalid=skip_invalid)


# ----------------------------------------------------------------------------- JSONL


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_jsonl_rows_of_any_shape_give_named_errors(kind, data):
    lines = data.draw(st.lists(st.one_of(
        row_strategy(kind).map(json.dumps),
        json_values.map(json.dumps),  # a list, a number, null... where an object is expected
        st.text(max_size=30),  # not JSON at all (or blank)
    ), min_size=0, max_size=6))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8")
        try:
            load(path, kind)
        except RlhfkitError as err:
            check_error(err, path)


@FUZZ
@given(kind=st.sampled_from(KINDS), n_good=st.integers(2, 5), data=st.data())
def test_one_bad_jsonl_row_is_named_by_line_and_field(kind, n_good, data):
    """Good rows around one broken row (with blank lines shifting the line numbers): the error
    names that line, and with skip_invalid every good row is kept."""
    bad = data.draw(row_strategy(kind))
    at = data.draw(st.integers(0, n_good))
    blanks = data.draw(st.integers(0, 2))
    rows = [GOOD[kind]] * at + [bad] + [GOOD[kind]] * (n_good - at)
    lines = [""] * blanks + [json.dumps(r) for r in rows]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            out, _ = load(path, kind)
        except DataError as err:
            check_error(err, path)
            if err.row is not None:  # a row-level error: exactly the broken row's line
                assert err.row == blanks + at + 1, str(err)
                assert f"row {blanks + at + 1}" in str(err)
                assert err.field is not None or "expected" in err.reason or "format" in err.reason, str(err)
            else:  # a whole-file verdict (e.g. the format cannot be told) still names the file
                assert err.source == str(path)
            kept, _ = load(path, kind, skip_invalid=True) if err.row is not None else (None, None)
            if kept is not None:
                assert len(kept) == n_good
        else:
            assert len(out) == n_good + 1


def render_chat(messages: list[dict], add_generation_prompt: bool) -> str:
    """A stand-in chat template: strict like a Jinja one (alternating roles, else an error)."""
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if any(a == b for a, b in zip(roles, roles[1:])):
        raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
    text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


CHAT = {  # conversational rows of each kind
    "sft": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "preference": {"prompt": [{"role": "user", "content": "q"}],
                   "chosen": [{"role": "assistant", "content": "a"}],
                   "rejected": [{"role": "assistant", "content": "b"}]},
    "prompt": {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
}
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "bot", ""]),
                           "content": st.one_of(st.text(max_size=6), json_values)}),
    st.dictionaries(st.sampled_from(["role", "content", "tool_calls"]), json_values, max_size=3),
    json_values), max_size=4)


@FUZZ
@given(kind=st.sampled_from(sorted(CHAT)), data=st.data())
def test_malformed_conversations_are_named_row_errors(kind, data):
    rows = [CHAT[kind]] * 2
    bad = dict(CHAT[kind])
    key = data.draw(st.sampled_from(sorted(bad)))
    bad[key] = data.draw(messages)
    at = data.draw(st.integers(0, 2))
    rows = rows[:at] + [bad] + rows[at:]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chat.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        try:
            out, _ = normalize(read_records(path), kind, source=str(path), render_chat=render_chat)
        except DataError as err:
            check_error(err, path)
            assert err.row == at + 1 and err.field == key, str(err)
        else:
            assert len(out) == 3


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_byte_mutations_of_a_good_jsonl_file_give_named_errors(kind, data):
    raw = bytearray("".join(json.dumps(GOOD[kind]) + "\n" for _ in range(3)).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from([0x00, 0x0A, 0x22, 0x5C, 0x7B, 0x7D, 0x80, 0xC3, 0xEF, 0xFF]))
        if op == "flip":
            raw[pos] = byte
        elif op == "insert":
            raw.insert(pos, byte)
        elif len(raw) > 1:
            del raw[pos]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_bytes(bytes(raw))
        try:
            load(path, kind)
        except RlhfkitError as err:
            check_error(err, path)


# ----------------------------------------------------------------------------- CSV


csv_cells = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=10) | \
    st.sampled_from(['"', '""', ',', '\n', '\r\n', '\t', 'a"b', '"a', '\x00'])


@FUZZ
@given(kind=st.sampled_from(["sft", "preference", "prompt"]), data=st.data())
def test_malformed_csv_gives_named_errors(kind, data):
    columns = list(GOOD[kind]) + data.draw(st.lists(st.sampled_from(["", "prompt", "x", "Unnamed: 0", "a,b"]),
                                                    max_size=2))
    body = data.draw(st.lists(st.lists(csv_cells, min_size=0, max_size=len(columns) + 1), max_size=5))

    def cell(c: str) -> str:
        return c if data.draw(st.booleans()) else '"' + c.replace('"', '""') + '"'

    text = "\n".join([",".join(columns)] + [",".join(cell(c) for c in r) for r in body])
    raw = text.encode("utf-8")
    if data.draw(st.booleans()):  # a stray invalid byte somewhere
        pos = data.draw(st.integers(0, len(raw)))
        raw = raw[:pos] + b"\xff" + raw[pos:]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.csv"
        path.write_bytes(raw)
        try:
            load(path, kind)
        except RlhfkitError as err:
            check_error(err, path)


# ----------------------------------------------------------------------------- Parquet


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_parquet_columns_of_wrong_types_give_named_errors(kind, data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = data.draw(st.integers(1, 4))
    columns = {}
    for key in GOOD[kind]:
        typed = st.sampled_from([
            [GOOD[kind][key]] * n, list(range(n)), [None] * n, [[1, 2]] * n, [{"a": 1}] * n,
            [float("nan")] * n, [True] * n, [b"\x00\xff"] * n, [""] * n,
        ])
        columns[key] = data.draw(typed)
    if data.draw(st.booleans()):
        columns.pop(data.draw(st.sampled_from(sorted(columns))))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.parquet"
        try:
            table = pa.table(columns) if columns else pa.table({"unrelated": list(range(n))})
        except (pa.ArrowException, TypeError, ValueError):
            return  # a table Arrow itself cannot build is not an input a user can have
        pq.write_table(table, path)
        try:
            load(path, kind)
        except RlhfkitError as err:
            check_error(err, path)


@FUZZ
@given(junk=st.binary(max_size=64), suffix=st.sampled_from([".parquet", ".jsonl", ".json", ".csv"]))
def test_random_bytes_are_a_named_data_error(junk, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{suffix}"
        path.write_bytes(junk)
        try:
            load(path, "sft")
        except RlhfkitError as err:
            check_error(err, path)


# ----------------------------------------------------------------------------- written files


@FUZZ
@given(old=st.lists(st.dictionaries(st.text(max_size=5), json_scalars, max_size=3), min_size=1, max_size=4),
       new=st.lists(st.one_of(st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
                              st.just({"bad": object()})), max_size=4))
def test_a_failed_write_keeps_the_old_file(old, new):
    """write_jsonl (the score / gold-score output writer) replaces the file only once every row
    is written: a row that cannot be serialised leaves the previous file byte for byte, and no
    temporary file behind."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scored.jsonl"
        write_jsonl(path, old)
        before = path.read_bytes()
        try:
            write_jsonl(path, new)
        except (TypeError, ValueError):
            assert path.read_bytes() == before
        else:
            assert [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()] == new
        assert sorted(p.name for p in Path(d).iterdir()) == ["scored.jsonl"]


# ----------------------------------------------------------------------------- configs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    (d / "config.json").write_text("{}")
    return d


# Values a YAML scalar can turn into, including ones PyYAML's constructors choke on.
yaml_values = st.one_of(
    st.sampled_from(["1", "-3", "0.5", "1e-3", ".nan", ".inf", "true", "no", "~", "null", "[]", "{}",
                     "[1, 2]", "{a: 1}", "'x'", '"y"', "2020-13-45", "2020-01-01", "!!int abc", "!!float x",
                     "!!timestamp x", "!!binary '###'", "!!python/object:os.system x", "&a [*a]", "[", "{",
                     "]", ": :", "'unterminated", "\"\\x\"", "- a", "|\n  text", "0x1G", "1_000",
                     "🙂", ""]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
config_keys = st.one_of(st.sampled_from([
    "learning_rate", "max_steps", "seed", "data", "model", "lr_scheduler", "adam_betas", "trackers",
    "keep_best_metric", "keep_best_mode", "save_every", "lora_target_modules", "max_grad_norm", "estimator",
    "num_samples", "reward_functions", "beta", "loss_type"]), st.text(max_size=8))


@FUZZ
@example(cls=SFTConfig, entries=[("seed", "2020-13-45")], prefix="")
@example(cls=PPOConfig, entries=[("max_steps", "!!timestamp x"), ("x", "&a [*a]")], prefix="---\n")
@example(cls=DPOConfig, entries=[("beta", "!!float x")], prefix="")
@given(cls=st.sampled_from([SFTConfig, DPOConfig, PPOConfig]),
       entries=st.lists(st.tuples(config_keys, yaml_values), max_size=5),
       prefix=st.sampled_from(["", "- a\n", "\t", "key: [\n", "%YAML 9.9\n", "---\n", "...\n"]))
def test_malformed_yaml_configs_give_config_errors(model_dir, cls, entries, prefix):
    base = f"model: {model_dir}\ndata: d.jsonl\n"
    text = prefix + base + "".join(f"{json.dumps(k)}: {v}\n" for k, v in entries)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(cls, path)
        except ConfigError as err:
            assert str(path) in str(err), str(err)


@FUZZ
@given(cls=st.sampled_from([SFTConfig, DPOConfig, PPOConfig]),
       items=st.lists(st.one_of(st.tuples(config_keys, yaml_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                                st.text(max_size=15)), max_size=5))
def test_malformed_overrides_give_config_errors(model_dir, cls, items):
    try:
        load_config(cls, None, [f"model={model_dir}", "data=d.jsonl", *items])
    except ConfigError as err:
        # Each complaint says where the value came from.
        assert "command line" in str(err) or "defaults" in str(err), str(err)


@FUZZ
@given(key=st.sampled_from(["learning_rate", "max_steps", "adam_betas", "keep_best_mode", "lr_scheduler"]),
       value=yaml_values)
def test_a_bad_value_names_its_key_and_origin(model_dir, key, value):
    try:
        load_config(SFTConfig, None, [f"model={model_dir}", "data=d.jsonl", f"{key}={value}"])
    except ConfigError as err:
        assert key in str(err) and "command line" in str(err), str(err)


def test_yaml_constructor_failures_are_config_errors(tmp_path, model_dir):
    """PyYAML raises ValueError / AttributeError (not YAMLError) for some tagged or date-like
    scalars; they must still name the file or the override."""
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model: {model_dir}\ndata: d.jsonl\nseed: 2020-13-45\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cfg.yaml"):
        load_config(SFTConfig, path)
    for bad in ("seed=!!int abc", "learning_rate=!!float x", "seed=!!timestamp x"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(SFTConfig, None, [f"model={model_dir}", "data=d.jsonl", bad])
    assert math.isnan(parse_overrides(["x=.nan"])["x"])


def test_gold_score_names_the_source_line_past_blank_lines(tmp_path):
    from rlhfkit.config import GoldScoreConfig
    from rlhfkit.errors import DataError
    from rlhfkit.synthetic.world import gold_score_file

    src = tmp_path / "c.jsonl"
    src.write_text('{"completion": "fine ."}\n\n\n{"completion": 3}\n')
    with pytest.raises(DataError, match="row 4") as e:
        gold_score_file(GoldScoreConfig(input=str(src), output=str(tmp_path / "out.jsonl")))
    assert "completion" in str(e.value)
