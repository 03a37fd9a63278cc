"""The console: user lines on it, everything in the job's log, errors never hidden; progress lines."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from jobs.console import RayDataProgress, user_text
from tests.conftest import ROOT
from training.progress import Progress


def test_user_lines_are_told_from_library_lines_whatever_ray_prefixes_them_with():
    assert user_text("\x1b[36m(RayTrainWorker pid=15796)\x1b[0m [train] step 1 loss 0.69") == "[train] step 1 loss 0.69"
    assert user_text("(TrainController pid=1, ip=10.0.0.2) [prepare] wrote shard") == "[prepare] wrote shard"
    assert user_text("[sft] [####....] 40% 4/10 steps") == "[sft] [####....] 40% 4/10 steps"
    # what Ray forwards while a progress bar is drawn: blanks and a cursor move before the prefix
    assert user_text(" " * 40 + "\x1b[A\x1b[36m(RayTrainWorker pid=2)\x1b[0m [sft] step 1") == "[sft] step 1"
    for chatter in (
        "INFO 11-29 00:30:01 [model_runner.py:1] Loading weights took 0.1 s",
        "\x1b[36m(PlacementGroupCleaner pid=2)\x1b[0m Failed to query Ray Train Controller actor state.",
        "(MapWorker pid=3) [repeated 2x across cluster]",
        "train: step 5 loss 0.4",
        "[rank0]: warning",
    ):
        assert user_text(chatter) is None, chatter


def test_ray_data_progress_reports_become_one_line(capsys):
    import logging

    handler = RayDataProgress("prepare", quiet_seconds=30)

    def report(at: float, done: int) -> None:
        for message in (
            "======= Running Dataset: dataset_1 =======",
            f"Total Progress: {done}/300",
            "Active & requested resources: 1/2 CPU, 0.0B/1.0GiB object store",
            "",
            "ReadRange: 300/300",
            "MapBatches(Embedder): 120/?",
            "===================================",
        ):
            record = logging.LogRecord("ray.data", logging.INFO, __file__, 0, message, None, None)
            record.created = at
            handler.emit(record)

    report(1000.0, 0)  # the report of a dataset as it starts: not shown
    report(1010.0, 60)
    assert capsys.readouterr().out == ""
    report(1031.0, 120)  # running for 31 s: one line
    assert capsys.readouterr().out == "[prepare] rows: total 120/300 · ReadRange 300/300 · MapBatches(Embedder) 120/?\n"


def test_progress_prints_at_each_tenth_and_at_the_end_not_every_step(capsys):
    progress = Progress("train", 250, "steps", every_seconds=3600)
    printed = sum(progress.update(step, loss="0.1") for step in range(1, 251))
    lines = capsys.readouterr().out.splitlines()
    assert printed == len(lines) == 11  # step 1, then 10%, 20%, ... 100%
    assert lines[0].startswith("[train] [") and " 1/250 steps · loss 0.1 " in lines[0]
    assert "100% 250/250 steps" in lines[-1] and "left" not in lines[-1]


SCRIPT = textwrap.dedent("""
    import os, sys
    from jobs.console import Console, show
    with Console(sys.argv[1], "demo", verbose=sys.argv[2] == "1"):
        print("[prepare] wrote shard-00000: 8 rows", flush=True)
        print("INFO vllm engine started", flush=True)
        sys.stderr.write("Loading weights: 100%|##########| 2/2\\n")
        os.write(2, b"C++ core worker log line\\n")
        print("(RayTrainWorker pid=1) [train] step 3", flush=True)
        show("| table | 1 |")
        if sys.argv[3] == "fail":
            raise ValueError("data.jsonl row 7, field 'rejected': response is empty")
""")


def _console(tmp_path, verbose: bool, fail: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "logs"), "1" if verbose else "0", "fail" if fail else "ok"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_console_shows_user_lines_and_the_log_keeps_everything(tmp_path):
    proc = _console(tmp_path, verbose=False, fail=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[prepare] wrote shard-00000: 8 rows", "[train] step 3", "| table | 1 |"]
    assert proc.stderr == ""
    log = (tmp_path / "logs" / "demo.log").read_text()
    for line in (
        "INFO vllm engine started",
        "Loading weights: 100%",
        "C++ core worker log line",
        "(RayTrainWorker pid=1) [train] step 3",
        "| table | 1 |",
    ):
        assert line in log, line
    verbose = _console(tmp_path / "v", verbose=True, fail=False)
    assert "INFO vllm engine started" in verbose.stdout and "Loading weights: 100%" in verbose.stdout


def test_a_failure_is_printed_with_its_message_and_the_log_path(tmp_path):
    proc = _console(tmp_path, verbose=False, fail=True)
    assert proc.returncode != 0
    log_path = tmp_path / "logs" / "demo.log"
    assert (
        f"[demo] failed: ValueError: data.jsonl row 7, field 'rejected': response is empty\n[demo] full log: {log_path}"
        in proc.stderr
    )
    assert "Traceback (most recent call last)" in log_path.read_text()


def test_a_malformed_source_fails_prepare_with_file_row_and_field_on_the_console(tiny_model_dir, tmp_path):
    source = tmp_path / "bad.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    rows[3]["rejected"] = ""
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [
        f"output_dir={tmp_path / 'out'}",
        f"model.policy_dir={tiny_model_dir}",
        f"data.source={source}",
        "data.on_bad_row=error",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.prepare",
            "--config",
            "configs/tiny.yaml",
            *[a for s in sets for a in ("--set", s)],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert f"[prepare] failed: SourceError: {source} row 4, field 'rejected': response is empty" in proc.stderr, (
        proc.stderr
    )
    log = tmp_path / "out" / "prepare" / "logs" / "prepare.log"
    assert f"[prepare] full log: {log}" in proc.stderr and "Traceback" in log.read_text()
    assert len(proc.stdout.splitlines()) < 10, proc.stdout
