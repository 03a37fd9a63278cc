"""``calign <job> --config FILE [--set KEY=VALUE ...]``: the command the package installs; ``calign train ...`` is
``python -m jobs.train ...``."""

from __future__ import annotations

import importlib
import sys

from jobs.common import run_cli

JOBS = {
    "sft": ("jobs.sft", "train (or reuse) the toy reference model"),
    "prepare": ("jobs.prepare", "build the preference shards (Ray Data)"),
    "train": ("jobs.train", "train the policy (Ray Train + DeepSpeed)"),
    "evaluate": ("jobs.evaluate", "score the reference and the policy on held-out data"),
    "run": ("jobs.run", "sft -> prepare -> train -> evaluate"),
    "compare": ("jobs.compare", "every method from the same reference, shards and budget"),
    "study": ("jobs.study", "methods x grid (on a validation split) x seeds, with 95% intervals (--quick: one seed)"),
    "config": ("jobs.config_doc", "print every config field with its default and meaning"),
    "gpu-check": (
        "benchmarks.gpu_check",
        "configs/gpu_single.yaml end to end on this machine's GPU, per-stage throughput",
    ),
}


# Jobs whose console shows only the user's lines (the rest in <output_dir>/<job>/logs/).
CONSOLE_JOBS = {"sft", "prepare", "train", "evaluate", "run", "compare", "study"}


def usage() -> str:
    return "usage: calign <job> --config FILE [--set KEY=VALUE ...] [--verbose]\n\njobs:\n" + "\n".join(
        f"  {name:<10} {what}" for name, (_, what) in JOBS.items()
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in JOBS:
        print(usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(JOBS[argv[0]][0])
    if argv[0] in CONSOLE_JOBS:
        run_cli(argv[0], module.main, argv[1:], getattr(module, "locate", None))
    else:
        module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
