"""Tests for the record contract (pipeline.records) and the source readers (pipeline.sources)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.records import (
    BASE_FIELD_NAMES,
    BASE_SCHEMA,
    ORIGINS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    RecordError,
    SchemaError,
    SchemaVersionError,
    check_base_fields,
    check_schema_version,
    extend_schema,
    validate_records,
    with_version,
)
from pipeline.sources import (
    FORMATS,
    REASONS,
    SourceError,
    SourceReport,
    detect_format,
    plain_chat_renderer,
    read_source,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --------------------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list[Any], *, gz: bool = False) -> Path:
    """Rows may be objects (dumped as JSON), str (written as is) or bytes (raw line)."""
    lines: list[bytes] = []
    for row in rows:
        if isinstance(row, bytes):
            lines.append(row)
        elif isinstance(row, str):
            lines.append(row.encode("utf-8"))
        else:
            lines.append(json.dumps(row).encode("utf-8"))
    data = b"\n".join(lines) + b"\n"
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def paired(i: int, **extra: Any) -> dict[str, Any]:
    return {"prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}", **extra}


def scored(i: int, **extra: Any) -> dict[str, Any]:
    return {"prompt": f"prompt {i}", "responses": ["a", "b", "c"], "scores": [1.0, 2.0, 3.0], **extra}


def conv(i: int) -> dict[str, Any]:
    return {
        "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "no"}],
    }


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (the shared data directory is optional)")
    return path


# --------------------------------------------------------------------------- real shared data


def test_alpacaeval_bo16_scored() -> None:
    path = shared_file("alpacaeval_bo16_scored.jsonl.gz")
    # Two samples are ~31k characters of padding, over the default max_chars;
    # lift the bound to see the README's full count.
    table, report = read_source(path, max_chars=None)
    assert report.format == "scored"
    assert table.num_rows == report.rows_out == report.rows_read == 805
    assert set(len(r) for r in table.column("responses").to_pylist()) == {11}
    assert table.column("scores").null_count == 0
    scores = table.column("scores").to_pylist()
    assert all(len(s) == 11 and all(1.0 <= x <= 2.0 for x in s) for s in scores)
    assert set(o for group in table.column("origins").to_pylist() for o in group) == {"dataset"}
    assert table.column("id")[0].as_py() == "alpacaeval_bo16_scored:1"
    assert table.column("source")[0].as_py() == "alpacaeval_bo16_scored.jsonl.gz"


def test_alpacaeval_default_max_chars_drops_two_overlong_rows() -> None:
    path = shared_file("alpacaeval_bo16_scored.jsonl.gz")
    table, report = read_source(path, on_bad_row="skip")
    assert report.rows_read == 805
    assert report.skipped == {"too_long": 2}
    assert table.num_rows == 803


def test_ultrafeedback_binarized_splits() -> None:
    path = shared_file("ultrafeedback_binarized_1200.jsonl.gz")
    # Two rows (479 and 834, both in train) have an empty response: bad rows by contract.
    with pytest.raises(SourceError, match=r"row 479, field 'rejected': response is empty"):
        read_source(path)
    total, report = read_source(path, on_bad_row="skip")
    assert report.rows_read == 1200
    assert report.format == "paired"
    assert report.skipped == {"empty_response": 2}
    assert total.num_rows == 1198
    assert total.column("scores").null_count == 0
    assert total.column("origins")[0].as_py() == ["chosen", "rejected"]

    train, train_report = read_source(path, split="train", on_bad_row="skip")
    assert train_report.rows_read == 1200 and train_report.filtered == 200
    assert train.num_rows + train_report.skipped_total == 1000

    evaluation, eval_report = read_source(path, split="eval")
    assert evaluation.num_rows == 200 and eval_report.filtered == 1000
    assert set(evaluation.column("id").to_pylist()).isdisjoint(train.column("id").to_pylist())


def test_hh_harmless_paired() -> None:
    path = shared_file("hh_harmless_test.jsonl.gz")
    with pytest.raises(SourceError, match=r"row 87, field 'chosen': response is empty"):
        read_source(path)
    table, report = read_source(path, on_bad_row="skip")
    assert report.rows_read == 2308
    assert report.format == "paired"
    assert report.skipped == {"empty_response": 4}
    assert table.num_rows == 2304
    assert table.column("scores").null_count == table.num_rows
    assert table.column("prompt")[0].as_py().endswith("\n\nAssistant:")


@pytest.mark.parametrize(
    ("name", "field"),
    [("alpaca_sft_999.jsonl.gz", "response"), ("alpaca_eval_805.jsonl.gz", "reference")],
)
def test_ground_truth_files(name: str, field: str) -> None:
    path = shared_file(name)
    expected = int(name.split("_")[-1].split(".")[0])
    table, report = read_source(path)
    assert report.format == "ground_truth"
    assert table.num_rows == report.rows_read == expected
    assert table.column("origins").to_pylist() == [["ground_truth"]] * expected
    assert table.column("scores").null_count == expected
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = json.loads(fh.readline())
    assert table.column("responses")[0].as_py() == [raw[field]]


def test_shared_data_reads_fast() -> None:
    import time

    path = shared_file("alpacaeval_bo16_scored.jsonl.gz")
    start = time.perf_counter()
    read_source(path, max_chars=None)
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------- row formats


def test_paired_with_and_without_scores(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [paired(1, score_chosen=9, score_rejected=7.5), paired(2)],
    )
    table, report = read_source(path)
    assert report.format == "paired" and report.kind == "jsonl"
    rows = table.to_pylist()
    assert rows[0]["responses"] == ["good 1", "bad 1"]
    assert rows[0]["origins"] == ["chosen", "rejected"]
    assert rows[0]["scores"] == [9.0, 7.5]
    assert rows[1]["scores"] is None
    assert [r["id"] for r in rows] == ["pairs:1", "pairs:2"]
    assert [r["row"] for r in rows] == [1, 2]


def test_scored_and_unscored_groups(tmp_path: Path) -> None:
    unscored = {"prompt": "p", "responses": ["x", "y"]}
    table, report = read_source(write_jsonl(tmp_path / "s.jsonl", [scored(1), unscored]))
    assert report.format == "scored"
    assert table.column("scores").to_pylist() == [[1.0, 2.0, 3.0], None]
    assert table.column("origins")[1].as_py() == ["dataset", "dataset"]


def test_ultrafeedback_completions_shape(tmp_path: Path) -> None:
    rows = [
        {
            "source": "evol_instruct",
            "instruction": "Write a haiku.",
            "models": ["m1", "m2", "m3"],
            "completions": [
                {"model": "m1", "response": "one", "overall_score": 7.5, "fine-grained_score": 4.0},
                {"model": "m2", "response": "two", "overall_score": 3},
                {"model": "m3", "response": "three", "overall_score": 9.0},
            ],
        },
        {
            "prompt": "Also a prompt key.",
            "completions": [{"response": "a", "overall_score": 1}, {"response": "b", "overall_score": 2}],
        },
    ]
    table, report = read_source(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert report.format == "scored"
    first, second = table.to_pylist()
    assert first["prompt"] == "Write a haiku."
    assert first["responses"] == ["one", "two", "three"]
    assert first["scores"] == [7.5, 3.0, 9.0]
    assert first["origins"] == ["dataset"] * 3
    assert second["prompt"] == "Also a prompt key."


def test_ground_truth_aliases(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a", "response": "r1"},
        {"prompt": "b", "reference": "r2", "dataset": "helpful_base"},
        {"prompt": "c", "output": "r3"},
    ]
    table, report = read_source(write_jsonl(tmp_path / "gt.jsonl", rows))
    assert report.format == "ground_truth"
    assert table.column("responses").to_pylist() == [["r1"], ["r2"], ["r3"]]


def test_conversational_ground_truth_plain_rendering(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
        ]
    }
    table, report = read_source(write_jsonl(tmp_path / "chat.jsonl", [row]))
    assert report.format == "conversational"
    record = table.to_pylist()[0]
    assert record["prompt"] == (
        "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant:"
    )
    assert record["responses"] == ["Blue."]
    assert record["origins"] == ["ground_truth"]
    assert record["scores"] is None


def test_conversational_pairs_with_renderer(tmp_path: Path) -> None:
    seen: list[list[dict[str, str]]] = []

    def renderer(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"

    row: dict[str, Any] = {
        "prompt": "ignored when the messages carry the prompt",
        "chosen": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": "Answer."},
            {"role": "assistant", "content": "4"},
        ],
        "rejected": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": "Answer."},
            {"role": "assistant", "content": "5"},
        ],
        "score_chosen": 10.0,
        "score_rejected": 1.0,
    }
    table, report = read_source(write_jsonl(tmp_path / "c.jsonl", [row]), chat_template_renderer=renderer)
    assert report.format == "conversational"
    record = table.to_pylist()[0]
    assert record["prompt"] == "<|user|>2+2?<|assistant|>Let me think.<|user|>Answer.<|assistant|>"
    assert record["responses"] == ["4", "5"]
    assert record["origins"] == ["chosen", "rejected"]
    assert record["scores"] == [10.0, 1.0]
    assert seen == [row["chosen"][:3]]


def test_conversational_explicit_prompt_trl_layout(tmp_path: Path) -> None:
    row = {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris"}],
        "rejected": [{"role": "assistant", "content": "Lyon"}],
    }
    table, _ = read_source(write_jsonl(tmp_path / "trl.jsonl", [row]))
    record = table.to_pylist()[0]
    assert record["prompt"] == "\n\nHuman: Capital of France?\n\nAssistant:"
    assert record["responses"] == ["Paris", "Lyon"]


def test_plain_chat_renderer_matches_hh_layout() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "bye"},
    ]
    assert plain_chat_renderer(messages) == "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: bye\n\nAssistant:"


def test_detect_format() -> None:
    assert detect_format(paired(1)) == "paired"
    assert detect_format(conv(1)) == "conversational"
    assert detect_format({"messages": []}) == "conversational"
    assert detect_format(scored(1)) == "scored"
    assert detect_format({"instruction": "x", "completions": []}) == "scored"
    assert detect_format({"prompt": "x", "output": "y"}) == "ground_truth"
    assert detect_format({"prompt": "x", "chosen": None, "rejected": None, "response": "y"}) == "ground_truth"
    assert detect_format({"text": "x"}) is None


def test_forced_format(tmp_path: Path) -> None:
    # A row with both shapes' keys: auto picks paired, forcing picks ground truth.
    row = {"prompt": "p", "chosen": "c", "rejected": "r", "response": "gt"}
    path = write_jsonl(tmp_path / "both.jsonl", [row])
    auto, _ = read_source(path)
    forced, report = read_source(path, format="ground_truth")
    assert auto.column("responses")[0].as_py() == ["c", "r"]
    assert forced.column("responses")[0].as_py() == ["gt"]
    assert report.format == "ground_truth"
    with pytest.raises(SourceError, match=r"row 1, field 'responses': field is missing"):
        read_source(path, format="scored")


def test_ids_explicit_and_default(tmp_path: Path) -> None:
    rows = [paired(1, id="alpha"), paired(2, id=42), paired(3)]
    # Blank lines are skipped but keep their line numbers, so ids match an editor.
    path = write_jsonl(tmp_path / "mix.jsonl.gz", [rows[0], "", rows[1], "   ", rows[2]], gz=True)
    table, report = read_source(path)
    assert report.kind == "jsonl.gz"
    assert table.column("id").to_pylist() == ["alpha", "42", "mix:5"]
    assert table.column("row").to_pylist() == [1, 3, 5]
    assert report.rows_read == 3


def test_report_to_dict_is_json(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [paired(1), paired(2, prompt=""), paired(3)])
    _, report = read_source(path, on_bad_row="skip")
    data = json.loads(json.dumps(report.to_dict()))
    assert data == {
        "path": str(path),
        "format": "paired",
        "kind": "jsonl",
        "split": None,
        "rows_read": 3,
        "rows_out": 2,
        "filtered": 0,
        "skipped": {"empty_prompt": 1},
        "examples": [f"{path} row 2, field 'prompt': prompt is empty"],
    }


def test_examples_are_capped(tmp_path: Path) -> None:
    rows = [paired(0)] + [paired(i, chosen="") for i in range(1, 20)]
    _, report = read_source(write_jsonl(tmp_path / "many.jsonl", rows), on_bad_row="skip")
    assert report.skipped == {"empty_response": 19}
    assert len(report.examples) == 5


# --------------------------------------------------------------------------- file kinds


def test_parquet_round_trip(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "id": "u1",
                "prompt": "p1",
                "chosen": "c1",
                "rejected": "r1",
                "score_chosen": 5.0,
                "score_rejected": 1.0,
            },
            {
                "id": "u2",
                "prompt": "p2",
                "chosen": "c2",
                "rejected": "r2",
                "score_chosen": None,
                "score_rejected": None,
            },
        ]
    )
    path = tmp_path / "pairs.parquet"
    frame.to_parquet(path)
    table, report = read_source(path)
    assert report.kind == "parquet" and report.format == "paired"
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["u1", "u2"]
    assert rows[0]["scores"] == [5.0, 1.0]
    # pandas holds the missing scores as NaN; pyarrow writes them as nulls, i.e. "no scores".
    assert rows[1]["scores"] is None


def test_parquet_nested_lists_and_bad_score(tmp_path: Path) -> None:
    path = tmp_path / "groups.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": ["p1", "p2", "p3"],
                "responses": [["a", "b"], ["c", "d"], ["e", "f"]],
                "scores": [[1.0, 2.0], [3.0, float("nan")], [5.0, 6.0]],
            }
        ),
        path,
    )
    with pytest.raises(SourceError) as info:
        read_source(path)
    assert str(info.value) == f"{path} row 2, field 'scores[1]': score is NaN"
    table, report = read_source(path, on_bad_row="skip")
    assert table.column("row").to_pylist() == [1, 3]
    assert report.skipped == {"bad_score": 1}


def test_hf_dataset_round_trip(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [scored(i, id=f"g{i}") for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hfds"))
    table, report = read_source(tmp_path / "hfds")
    assert report.kind == "hf" and report.format == "scored"
    assert table.column("id").to_pylist() == ["g0", "g1", "g2", "g3"]
    assert table.column("scores")[0].as_py() == [1.0, 2.0, 3.0]
    assert table.column("source")[0].as_py() == "hfds"


def test_hf_dataset_dict_split_and_messages(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    msgs = lambda i: {  # noqa: E731
        "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    }
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([msgs(i) for i in range(3)]),
        test=datasets.Dataset.from_list([msgs(i) for i in range(10, 12)]),
    )
    dd.save_to_disk(str(tmp_path / "chat"))
    table, report = read_source(tmp_path / "chat", hf_split="test")
    assert report.format == "conversational"
    assert table.column("responses").to_pylist() == [["a10"], ["a11"]]
    assert table.column("id").to_pylist() == ["chat/test:1", "chat/test:2"]
    train, _ = read_source(tmp_path / "chat")
    assert train.num_rows == 3
    with pytest.raises(SourceError, match=r"split 'validation' not in the DatasetDict"):
        read_source(tmp_path / "chat", hf_split="validation")


def test_unsupported_paths(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("prompt,response\n")
    with pytest.raises(SourceError, match=r"data\.csv: unsupported source"):
        read_source(tmp_path / "data.csv")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(SourceError, match=r"plain_dir: directory is not a Hugging Face dataset"):
        read_source(tmp_path / "plain_dir")
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        read_source(tmp_path / "nope.jsonl")


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "p", "response": "r"}\n' * 100)[:40])
    with pytest.raises(SourceError, match=r"broken\.jsonl\.gz: cannot read gzip data"):
        read_source(path)


def test_empty_sources_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.jsonl: source is empty"):
        read_source(empty, on_bad_row="skip")
    blank = tmp_path / "blank.jsonl.gz"
    blank.write_bytes(gzip.compress(b"\n\n  \n"))
    with pytest.raises(SourceError, match=r"blank\.jsonl\.gz: source is empty"):
        read_source(blank)
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"prompt": pa.array([], pa.string()), "response": pa.array([], pa.string())}), empty_parquet
    )
    with pytest.raises(SourceError, match=r"empty\.parquet: source is empty"):
        read_source(empty_parquet)
    all_bad = write_jsonl(tmp_path / "allbad.jsonl", [paired(1, prompt=""), paired(2, prompt="")])
    with pytest.raises(SourceError, match=r"allbad\.jsonl: no valid rows"):
        read_source(all_bad, on_bad_row="skip")
    other_split = write_jsonl(tmp_path / "split.jsonl", [paired(1, split="train")])
    with pytest.raises(SourceError, match=r"split\.jsonl: no rows with split 'eval'"):
        read_source(other_split, split="eval")


def test_argument_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ok.jsonl", [paired(1)])
    with pytest.raises(ValueError, match="on_bad_row"):
        read_source(path, on_bad_row="ignore")
    with pytest.raises(ValueError, match="format"):
        read_source(path, format="pairs")
    with pytest.raises(ValueError, match="max_chars"):
        read_source(path, max_chars=0)
    assert not issubclass(SourceError, KeyError) and issubclass(SourceError, ValueError)


# --------------------------------------------------------------------------- malformed rows


def _failing_renderer(messages: list[dict[str, str]]) -> str:
    raise RuntimeError("template expects alternating roles")


# Each case: (id, rows written to the file -- row 2 is the bad one -- the
# expected reason code, the field named in the message, read_source kwargs).
MALFORMED: list[tuple[str, list[Any], str, str, dict[str, Any]]] = [
    ("malformed_json", [paired(1), '{"prompt": "p", "chosen": ', paired(3)], "malformed_json", "<line>", {}),
    (
        "invalid_utf8",
        [paired(1), b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}', paired(3)],
        "invalid_utf8",
        "<line>",
        {},
    ),
    (
        "lone_surrogate",
        [paired(1), '{"prompt": "x\\ud800y", "chosen": "c", "rejected": "r"}', paired(3)],
        "invalid_utf8",
        "prompt",
        {},
    ),
    ("not_an_object", [paired(1), "[1, 2, 3]", paired(3)], "not_an_object", "<line>", {}),
    ("unknown_format", [{"text": "no known keys"}, paired(2), paired(3)], "unknown_format", "<line>", {}),
    (
        "missing_field",
        [paired(1), {"prompt": "p", "chosen": "c"}, paired(3)],
        "missing_field",
        "rejected",
        {},
    ),
    (
        "missing_half_of_score_pair",
        [paired(1), paired(2, score_chosen=3.0), paired(3)],
        "missing_field",
        "score_rejected",
        {},
    ),
    ("wrong_type_prompt", [paired(1), paired(2, prompt=17), paired(3)], "wrong_type", "prompt", {}),
    (
        "wrong_type_responses",
        [scored(1), scored(2, responses="a b c"), scored(3)],
        "wrong_type",
        "responses",
        {},
    ),
    (
        "wrong_type_response_item",
        [scored(1), scored(2, responses=["a", 2, "c"]), scored(3)],
        "wrong_type",
        "responses[1]",
        {},
    ),
    ("wrong_type_id", [paired(1), paired(2, id=[1]), paired(3)], "wrong_type", "id", {}),
    ("empty_prompt", [paired(1), paired(2, prompt="  \n"), paired(3)], "empty_prompt", "prompt", {}),
    ("empty_response", [paired(1), paired(2, rejected=""), paired(3)], "empty_response", "rejected", {}),
    (
        "empty_scored_response",
        [scored(1), scored(2, responses=["a", "", "c"]), scored(3)],
        "empty_response",
        "responses[1]",
        {},
    ),
    (
        "too_few_responses",
        [scored(1), scored(2, responses=["a"], scores=[1.0]), scored(3)],
        "too_few_responses",
        "responses",
        {},
    ),
    (
        "too_few_completions",
        [scored(1), {"instruction": "i", "completions": [{"response": "x", "overall_score": 1}]}, scored(3)],
        "too_few_responses",
        "completions",
        {},
    ),
    (
        "nan_score",
        [scored(1), '{"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 2, NaN]}', scored(3)],
        "bad_score",
        "scores[2]",
        {},
    ),
    (
        "inf_score",
        [scored(1), '{"prompt": "p", "responses": ["a", "b", "c"], "scores": [Infinity, 2, 3]}', scored(3)],
        "bad_score",
        "scores[0]",
        {},
    ),
    (
        "string_score",
        [scored(1), scored(2, scores=[1.0, "high", 3.0]), scored(3)],
        "bad_score",
        "scores[1]",
        {},
    ),
    (
        "bool_score",
        [paired(1), paired(2, score_chosen=True, score_rejected=1.0), paired(3)],
        "bad_score",
        "score_chosen",
        {},
    ),
    (
        "null_score_item",
        [scored(1), scored(2, scores=[1.0, None, 3.0]), scored(3)],
        "bad_score",
        "scores[1]",
        {},
    ),
    (
        "missing_overall_score",
        [
            scored(1),
            {"instruction": "i", "completions": [{"response": "x", "overall_score": 1}, {"response": "y"}]},
            scored(3),
        ],
        "missing_field",
        "completions[1].overall_score",
        {},
    ),
    (
        "length_mismatch",
        [scored(1), scored(2, scores=[1.0, 2.0]), scored(3)],
        "length_mismatch",
        "scores",
        {},
    ),
    ("duplicate_id", [paired(1, id="x"), paired(2, id="x"), paired(3, id="z")], "duplicate_id", "id", {}),
    (
        "too_long_response",
        [paired(1), paired(2, chosen="y" * 200), paired(3)],
        "too_long",
        "chosen",
        {"max_chars": 100},
    ),
    (
        "too_long_prompt",
        [paired(1), paired(2, prompt="x" * 200), paired(3)],
        "too_long",
        "prompt",
        {"max_chars": 100},
    ),
    (
        "missing_split",
        [paired(1, split="train"), paired(2), paired(3, split="train")],
        "missing_field",
        "split",
        {"split": "train"},
    ),
    (
        "conv_no_answer",
        [conv(1), {"messages": [{"role": "user", "content": "q"}]}, conv(3)],
        "missing_field",
        "messages[0]",
        {"format": "conversational"},
    ),
    (
        "conv_bad_message",
        [
            conv(1),
            {
                "chosen": [{"role": "user"}, {"role": "assistant", "content": "a"}],
                "rejected": conv(2)["rejected"],
            },
            conv(3),
        ],
        "missing_field",
        "chosen[0].content",
        {},
    ),
    (
        "conv_prefix_mismatch",
        [conv(1), {"chosen": conv(2)["chosen"], "rejected": conv(99)["rejected"]}, conv(3)],
        "prefix_mismatch",
        "rejected[0]",
        {},
    ),
    (
        "conv_render_failed",
        [
            {
                "messages": [
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "b"},
                ]
            }
        ]
        * 3,
        "render_failed",
        "messages",
        {"chat_template_renderer": _failing_renderer},
    ),
]


@pytest.mark.parametrize(
    ("rows", "reason", "field", "kwargs"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_row_raises(tmp_path: Path, rows: list[Any], reason: str, field: str, kwargs: dict[str, Any]) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(SourceError) as info:
        read_source(path, **kwargs)
    message = str(info.value)
    # The first bad row is row 1 only for cases that are bad from the start.
    bad_row = 1 if reason in ("unknown_format", "render_failed") else 2
    assert message.startswith(f"{path} row {bad_row}, field '{field}': "), message
    assert "data.jsonl" in message
    assert info.value.reason == reason
    assert info.value.row == bad_row
    assert info.value.field == field
    assert info.value.path == str(path)
    assert reason in REASONS


@pytest.mark.parametrize(
    ("rows", "reason", "field", "kwargs"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_row_skipped(
    tmp_path: Path, rows: list[Any], reason: str, field: str, kwargs: dict[str, Any]
) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    if reason == "render_failed":
        # Every row fails to render: nothing is left, which is itself an error.
        with pytest.raises(SourceError, match=r"no valid rows"):
            read_source(path, on_bad_row="skip", **kwargs)
        return
    table, report = read_source(path, on_bad_row="skip", **kwargs)
    assert report.skipped == {reason: 1}
    assert report.rows_read == 3
    assert report.rows_out == table.num_rows == 2
    bad_row = 1 if reason == "unknown_format" else 2
    assert bad_row not in table.column("row").to_pylist()
    assert report.examples[0].startswith(f"{path} row {bad_row}, field '{field}': ")


def test_malformed_cases_cover_most_reasons() -> None:
    covered = {case[2] for case in MALFORMED}
    assert len(covered) >= 12
    assert covered == set(REASONS)


def test_render_failed_skips_only_that_row(tmp_path: Path) -> None:
    calls: list[int] = []

    def picky(messages: list[dict[str, str]]) -> str:
        calls.append(1)
        if messages[0]["role"] != "user":
            raise ValueError("conversation must start with a user message")
        return "USER: " + messages[-1]["content"]

    rows = [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
        {
            "messages": [
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"},
            ]
        },
    ]
    table, report = read_source(
        write_jsonl(tmp_path / "chat.jsonl", rows), on_bad_row="skip", chat_template_renderer=picky
    )
    assert table.column("prompt").to_pylist() == ["USER: q1"]
    assert report.skipped == {"render_failed": 1}
    assert "conversation must start with a user message" in report.examples[0]


# --------------------------------------------------------------------------- records contract


def _records(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": ["a", "b"],
        "prompt": ["p1", "p2"],
        "responses": [["x", "y"], ["gt"]],
        "origins": [["chosen", "rejected"], ["ground_truth"]],
        "scores": pa.array([[1.0, 0.0], None], pa.list_(pa.float64())),
        "source": ["s.jsonl", "s.jsonl"],
        "row": [1, 2],
    }
    base.update(overrides)
    return base


def test_base_schema_shape() -> None:
    assert BASE_FIELD_NAMES == ("id", "prompt", "responses", "origins", "scores", "source", "row")
    assert BASE_SCHEMA.metadata[SCHEMA_VERSION_KEY] == str(SCHEMA_VERSION).encode()
    assert SCHEMA_VERSION == 1
    assert ORIGINS == (
        "dataset",
        "chosen",
        "rejected",
        "ground_truth",
        "autoregressive",
        "meanfield",
        "truncation",
        "batch",
    )
    assert set(FORMATS) == {"paired", "scored", "ground_truth", "conversational"}


def test_validate_casts_and_keeps_extra_columns_after_base() -> None:
    raw = pa.table(
        {
            "rank": pa.array([[0, 1], [0]], pa.list_(pa.int32())),
            **_records(
                id=pa.array(["a", "b"], pa.large_string()),
                row=pa.array([1, 2], pa.int32()),
                scores=pa.array([[1.0, 0.0], None], pa.list_(pa.float32())),
            ),
        }
    )
    out = validate_records(raw)
    assert out.column_names == [*BASE_FIELD_NAMES, "rank"]
    check_base_fields(out.schema)
    assert check_schema_version(out) == SCHEMA_VERSION
    assert out.schema.field("row").type == pa.int64()
    assert out.schema.field("rank").type == pa.list_(pa.int32())


def test_schema_version_survives_parquet(tmp_path: Path) -> None:
    path = tmp_path / "shard.parquet"
    pq.write_table(validate_records(pa.table(_records())), path)
    schema = pq.read_schema(path)
    check_base_fields(schema)
    assert check_schema_version(schema) == 1


def test_schema_version_errors() -> None:
    bare = pa.table(_records())
    with pytest.raises(SchemaVersionError, match="no version"):
        check_schema_version(bare)
    future = bare.replace_schema_metadata({SCHEMA_VERSION_KEY: b"2"})
    with pytest.raises(SchemaVersionError, match="version 2 is not supported"):
        check_schema_version(future)
    garbage = bare.replace_schema_metadata({SCHEMA_VERSION_KEY: b"v1"})
    with pytest.raises(SchemaVersionError, match="not an integer"):
        check_schema_version(garbage)
    assert check_schema_version(with_version(bare)) == 1
    assert issubclass(SchemaVersionError, SchemaError) and issubclass(SchemaError, ValueError)


def test_check_base_fields_errors() -> None:
    with pytest.raises(SchemaError, match="missing column 'scores'"):
        check_base_fields(pa.table(_records()).drop_columns(["scores"]).schema)
    wrong = pa.table(_records(row=pa.array([1.5, 2.5])))
    with pytest.raises(SchemaError, match="column 'row' has type double"):
        check_base_fields(wrong.schema)
    with pytest.raises(SchemaError, match="column 'row'"):
        validate_records(wrong)


def test_extend_schema() -> None:
    schema = extend_schema({"ref_logps": pa.list_(pa.float64()), "group_id": pa.int64()})
    assert schema.names == [*BASE_FIELD_NAMES, "ref_logps", "group_id"]
    assert check_schema_version(schema) == 1
    with pytest.raises(SchemaError, match="base column"):
        extend_schema([pa.field("scores", pa.float64())])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"origins": [["chosen", "oops"], ["ground_truth"]]}, "unknown origin 'oops'"),
        ({"origins": [["chosen"], ["ground_truth"]]}, "length differs from responses"),
        ({"responses": [["x"], ["gt"]], "origins": [["chosen"], ["ground_truth"]]}, "at least 2 responses"),
        ({"scores": pa.array([[1.0], None], pa.list_(pa.float64()))}, "column 'scores': length differs"),
        ({"scores": pa.array([[1.0, float("inf")], None], pa.list_(pa.float64()))}, "not a finite number"),
        ({"id": ["a", "a"]}, "duplicate id 'a'"),
        ({"prompt": ["p1", None]}, "column 'prompt': value is null"),
        ({"responses": [["x", None], ["gt"]]}, "contains a null item"),
        ({"row": [0, 1]}, "1-based"),
    ],
)
def test_validate_rejects_bad_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        validate_records(pa.table(_records(**overrides)))


def test_read_source_output_is_valid_records(tmp_path: Path) -> None:
    table, _ = read_source(write_jsonl(tmp_path / "ok.jsonl", [paired(1), paired(2)]))
    check_base_fields(table.schema)
    assert check_schema_version(table) == SCHEMA_VERSION
    assert table.schema.equals(BASE_SCHEMA, check_metadata=True)
    assert isinstance(read_source(tmp_path / "ok.jsonl")[1], SourceReport)


def test_validate_reports_absolute_record_index_across_chunks() -> None:
    good = pa.table(_records())
    bad = pa.table(_records(id=["c", "d"], origins=[["chosen", "rejected"], ["oops"]]))
    table = pa.concat_tables([good, bad])
    assert table.column("origins").num_chunks == 2
    with pytest.raises(RecordError, match=r"record 3 \(id 'd', s\.jsonl row 2\), column 'origins'"):
        validate_records(table)
