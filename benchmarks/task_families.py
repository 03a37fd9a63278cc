"""Which families of the embedded task suit a pretrained model: its greedy exact match and pass@k per family.

``python -m benchmarks.task_families --config configs/demo.yaml [--prompts 48] [--samples 8]`` answers held-out
prompts of every family (the chat form, rendered by the model's chat template) once greedily and ``--samples`` times
as prepare samples (the config's temperature, top-k and token limit), with one vLLM engine in this process. A family
teaches preference
optimisation something when the model's greedy answer is right sometimes (15-70%) and its samples are right more
often (pass@k well above greedy): there is a spread of rewards within each prompt to learn from. Writes
``<output_dir>/task_families.json`` and prints the table (the README's).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from transformers import AutoTokenizer

from configs.data import TaskConfig
from configs.schema import load_config
from pipeline import task
from pipeline.tokenize import chat_renderer, encode_prompt, user_prompt
from training.pretrained import materialize_policy


def family_table(
    model_dir: str,
    prompts_per_family: int,
    samples: int,
    seed: int,
    dtype: str,
    threads: int,
    temperature: float,
    top_k: int,
    max_tokens: int,
) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{threads - 1}"
    import vllm  # heavy: only this measurement pays it

    families = list(task.FAMILIES)
    spec = TaskConfig(families=families, n_train=10, n_heldout=prompts_per_family * len(families), form="chat")
    heldout = task.splits(seed, spec)[1]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    render = chat_renderer(tokenizer, "auto")
    ids = [encode_prompt(tokenizer, *user_prompt(r["prompt"], render)) for r in heldout]
    llm = vllm.LLM(model=model_dir, dtype=dtype, max_model_len=256, seed=seed, enforce_eager=True)
    greedy = llm.generate(
        [{"prompt_token_ids": p} for p in ids],
        vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        use_tqdm=False,
    )
    sampled = llm.generate(
        [{"prompt_token_ids": p} for p in ids],
        vllm.SamplingParams(n=samples, temperature=temperature, top_k=top_k, max_tokens=max_tokens),
        use_tqdm=False,
    )
    table: dict[str, dict] = {}
    for family in families:
        idx = [i for i, r in enumerate(heldout) if r["family"] == family]
        exact = [task.exact_match(heldout[i]["prompt"], greedy[i].outputs[0].text) for i in idx]
        passed = [any(task.exact_match(heldout[i]["prompt"], c.text) for c in sampled[i].outputs) for i in idx]
        rewards = [task.reward(heldout[i]["prompt"], c.text) for i in idx for c in sampled[i].outputs]
        table[family] = {
            "prompts": len(idx),
            "greedy_exact_match": sum(exact) / len(idx),
            f"pass@{samples}": sum(passed) / len(idx),
            "sample_mean_reward": sum(rewards) / len(rewards),
            "examples": [{"prompt": heldout[i]["prompt"], "greedy": greedy[i].outputs[0].text} for i in idx[:3]],
        }
    return table


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.task_families")
    ap.add_argument("--config", default="configs/demo.yaml", help="the run config whose model is measured")
    ap.add_argument("--prompts", type=int, default=48, help="held-out prompts per family")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt for pass@k")
    ap.add_argument("--dtype", default="bfloat16", help="vLLM precision")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    materialize_policy(cfg)
    neg = cfg.prepare.negatives
    table = family_table(
        str(cfg.policy_dir()),
        args.prompts,
        args.samples,
        cfg.seed,
        args.dtype,
        os.cpu_count(),
        neg.temperature,
        neg.top_k,
        neg.max_tokens,
    )
    out = Path(cfg.output_dir) / "task_families.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"model": str(cfg.policy_dir()), "temperature": neg.temperature, "top_k": neg.top_k, "table": table},
            indent=2,
        )
    )
    k = f"pass@{args.samples}"
    print(f"| family | greedy exact match | {k} | mean reward of samples |\n| --- | --- | --- | --- |")
    for family, row in table.items():
        print(f"| {family} | {row['greedy_exact_match']:.2f} | {row[k]:.2f} | {row['sample_mean_reward']:.3f} |")
    return table


if __name__ == "__main__":
    main()
