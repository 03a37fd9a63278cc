"""Sources through Ray Data's read tasks and the checking stage give what the in-process reader gives: the same
records, row numbers, skip reasons and messages (every ../shared/data file, Parquet row groups, HF Arrow files)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from configs.schema import load_config
from orchestration.prepare import user_error
from pipeline.read import OTHER_SPLIT, read_checked, source_pieces
from pipeline.sources import SourceError, read_source
from tests.conftest import ROOT, SHARED_DATA


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().raise_original_map_exception = True  # as the prepare job sets it
    yield
    ray.shutdown()


def _through_ray(source: Path, **data) -> tuple[list[dict], Counter, dict]:
    sets = [
        f"data.source={source}",
        "data.chat_template=none",
        "prepare.max_rows=null",
        *(f"data.{k}={v}" for k, v in data.items()),
    ]
    cfg = load_config(ROOT / "configs/tiny.yaml", sets)
    ds, _ = read_checked(cfg, "unused: no chat template")
    rows = sorted(ds.take_all(), key=lambda r: r["row"])
    good = [r for r in rows if not r["skip_reason"]]
    skipped = Counter(r["skip_reason"].removeprefix("source:") for r in rows if r["skip_reason"])
    messages = {r["row"]: r["skip_message"] for r in rows if r["skip_reason"] and r["skip_reason"] != OTHER_SPLIT}
    return good, skipped, messages


def _same_as_read_source(source: Path, **kwargs) -> None:
    table, report = read_source(source, on_bad_row="skip", **kwargs)
    names = {"split": "split", "max_chars": "max_chars", "hf_split": "hf_split"}
    good, skipped, messages = _through_ray(source, on_bad_row="skip", **{names[k]: v for k, v in kwargs.items()})
    expected = table.to_pylist()
    assert [r["row"] for r in good] == [r["row"] for r in expected]
    for got, want in zip(good, expected):
        assert {k: got[k] for k in ("id", "prompt", "responses", "origins", "source")} == {
            k: want[k] for k in ("id", "prompt", "responses", "origins", "source")
        }
        assert (got["scores"] or None) == want["scores"]
    filtered = skipped.pop(OTHER_SPLIT, 0)
    assert filtered == report.filtered and dict(skipped) == report.skipped
    assert [messages[r] for r in sorted(messages)][: len(report.examples)] == report.examples


@pytest.mark.parametrize("name", sorted(p.name for p in SHARED_DATA.glob("*.jsonl.gz")) or ["absent"])
def test_every_shared_data_file_reads_the_same_through_ray_data(name):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip("../shared/data is not present")
    _same_as_read_source(path)
    if name.startswith("ultrafeedback"):
        _same_as_read_source(path, split="train")


def test_bad_rows_get_the_readers_reasons_and_messages(tmp_path):
    lines = [
        json.dumps({"prompt": "p1", "chosen": "a", "rejected": "b"}),
        "{not json",
        "",
        json.dumps({"prompt": "", "chosen": "a", "rejected": "b"}),
        json.dumps([1, 2]),
        json.dumps({"prompt": "p5", "chosen": "a", "rejected": ""}),
        json.dumps({"prompt": "p6", "chosen": "a", "rejected": "b"}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _same_as_read_source(path)
    with pytest.raises(Exception) as raised:
        _through_ray(path, on_bad_row="error")
    error = user_error(raised.value)  # what the prepare job raises: the reader's error, out of Ray's wrappers
    assert isinstance(error, SourceError) and (error.row, error.field, error.reason) == (2, "<line>", "malformed_json")
    assert str(error).startswith(f"{path} row 2, field '<line>': malformed JSON")


def test_user_error_unwraps_only_bad_input_and_keeps_other_failures_whole():
    bad = SourceError(
        "data.jsonl row 3, field 'prompt': empty", path="data.jsonl", row=3, field="prompt", reason="empty"
    )
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = bad
    assert user_error(wrapped) is bad
    # a ValueError from a bug or the environment (a tokenizer with no EOS, a reward that is not finite) is not
    # the input's fault: unwrapping it would drop the worker's traceback
    other = RuntimeError("worker failed")
    other.__cause__ = ValueError("tokenizer 'x' has neither a pad nor an EOS token")
    assert user_error(other) is None


def test_format_detection_matches_the_reader_when_the_first_rows_are_bad(tmp_path):
    lines = [
        "[]",
        json.dumps({"question": "x"}),
        json.dumps({"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]}),
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}),
    ]
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _same_as_read_source(path)


def test_parquet_row_groups_are_read_in_parallel_with_their_row_numbers(tmp_path):
    rows = [{"prompt": f"p{i}", "responses": ["a", "b" * (i % 3)], "scores": [1.0, 0.5]} for i in range(50)]
    path = tmp_path / "many.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=8)
    _, _, pieces = source_pieces(path, "train")
    assert len(pieces) == 7 and [p.first_row for p in pieces] == [1, 9, 17, 25, 33, 41, 49]
    _same_as_read_source(path)


def test_hf_datasets_read_every_arrow_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no" if i % 5 else ""} for i in range(40)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"), num_shards=3)
    _, _, pieces = source_pieces(tmp_path / "hf", "train")
    assert len(pieces) == 3 and sum(p.rows for p in pieces) == 40
    _same_as_read_source(tmp_path / "hf")


def test_test_rows_are_the_same_prompts_whatever_the_order_and_never_both_sides(tmp_path):
    """data.test_fraction: a prompt's side is fixed by its text and the seed, so a reordered file sets apart the same
    prompts, a repeated prompt lands on one side, and train + test are every row once."""
    rows = [{"prompt": f"question {i % 40}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(60)]
    rows.append({"prompt": "question 1", "chosen": "", "rejected": "bad"})  # invalid: reported on one side only
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    train, skipped_train, _ = _through_ray(source, test_fraction=0.3, on_bad_row="skip")
    test, skipped_test, _ = _through_ray(source, test_fraction=0.3, rows="test", on_bad_row="skip")
    test_prompts = {r["prompt"] for r in test}
    assert {r["prompt"] for r in train}.isdisjoint(test_prompts)
    assert len(train) + len(test) == 60 and skipped_train[OTHER_SPLIT] == len(test)
    assert skipped_train["empty_response"] == 1 and "empty_response" not in skipped_test
    assert skipped_test[OTHER_SPLIT] == len(train) + 1
    assert 4 <= len(test_prompts) <= 24  # about 30% of the 40 distinct prompts
    assert {
        r["prompt"] for r in _through_ray(shuffled, test_fraction=0.3, rows="test", on_bad_row="skip")[0]
    } == test_prompts
    reseeded = load_config(
        ROOT / "configs/tiny.yaml",
        [f"data.source={source}", "data.chat_template=none", "prepare.max_rows=null", "data.test_fraction=0.3"]
        + ["seed=1", "data.on_bad_row=skip"],
    )
    other, _ = read_checked(reseeded, "unused: no chat template")
    assert {r["prompt"] for r in other.take_all() if not r["skip_reason"]} != {r["prompt"] for r in train}
