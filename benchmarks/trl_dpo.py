"""TRL's DPOTrainer on the benchmark's pairs, run in its own process by :mod:`benchmarks.train_vs_trl`.

Its own process so that its thread count and peak resident memory are its own. TRL runs in its fastest
setting on a CPU: reference log-probs precomputed before training (outside the timed steps); ``--bf16``: the
Trainer's bf16 mixed precision (``torch.autocast`` on the CPU); ``--lora-rank``: peft adapters on every linear
layer, the reference being the base model with the adapters off.

    python -m benchmarks.trl_dpo --model DIR --pairs FILE.jsonl --steps N --warmup W --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True, help="jsonl of {prompt, chosen, rejected}")
    ap.add_argument("--steps", type=int, required=True, help="optimizer steps timed after the warm-up")
    ap.add_argument("--warmup", type=int, default=2, help="optimizer steps run before timing")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 mixed precision (else fp32)")
    ap.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on all linear layers (0: full fine-tuning)")
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    # heavy, and trl is optional (the bench extra): imported once the threads are set
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in open(args.pairs)]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = DPOConfig(
        output_dir=f"{args.out}.trl",
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        beta=args.beta,
        max_length=args.max_length,
        truncation_mode="keep_start",
        precompute_ref_log_probs=True,
        use_cpu=True,
        bf16=args.bf16,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        dataloader_num_workers=0,
        seed=0,
    )
    peft_config = None
    if args.lora_rank:
        from peft import LoraConfig  # only with --lora-rank

        peft_config = LoraConfig(
            r=args.lora_rank, lora_alpha=args.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    started = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    setup_seconds = time.perf_counter() - started  # tokenizing and the reference pass (precompute)

    # Non-padding tokens of each batch, in the order the trainer consumes them.
    tokens: list[int] = []
    collate = trainer.data_collator

    def counting_collator(examples):
        out = collate(examples)
        tokens.append(int(out["attention_mask"].sum()))
        return out

    trainer.data_collator = counting_collator
    step_seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_seconds.append(time.perf_counter() - self.t)

    trainer.add_callback(StepTimer())
    trainer.train()
    timed = step_seconds[args.warmup :]
    seconds = sum(timed)
    n_tokens = sum(tokens[args.warmup : args.warmup + len(timed)])
    result = {
        "trl_version": __import__("trl").__version__,
        "threads": args.threads,
        "bf16": args.bf16,
        "lora_rank": args.lora_rank,
        "setup_seconds": setup_seconds,
        "timed_steps": len(timed),
        "seconds": seconds,
        "samples_per_second": len(timed) * args.batch / seconds,
        "tokens_per_second": n_tokens / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
