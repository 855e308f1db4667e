# The third evidence run (issue 25): where forgetting is strong. Needs the audit run's audited
# pool (experiments/audit.mk: `make audit-pool`, or its committed results/audit/pool_scores.parquet).
#
#   make experiment-v3 V3_BUDGET=16            # every arm listed below, resumable, arm by arm
#   make v3-arm ARM=random-b8-s0               # one arm
#
# Qwen2.5-Coder-0.5B-Instruct (aligned by its makers) fine-tuned with the results/qwen recipe on a
# benign set chosen for strong forgetting (V3_BENIGN: a cut of the audited pool, see
# experiments/audit_arms.py), plus safety rows a strategy picked from 1,500 Safety-Tuned-LLaMAs
# rows (labelled, embedded, clustered like the qwen run's pool; decontaminated against every eval
# prompt). Arms, `<strategy>-b<budget>-s<seed>` (the seed sets the draw, the mix order and the
# LoRA init, shared by the arms it pairs):
# - dose-response on seed 0: none, random at V3_DOSE budgets;
# - at V3_BUDGET, seeds V3_SEEDS: random, diverse, targeted (select --strategy targeted --against
#   the audited benign set);
# - audit as a defence, seeds V3_SEEDS: droptop (the benign set minus its audit top V3_DROP %),
#   droprand (minus V3_DROP % at random), droptop_<V3_BEST> (droptop plus that strategy's rows,
#   paired with that strategy alone: does the drop add to the safety rows?).
# Outcomes per arm (results/v3/arms/<arm>.parquet, committed as each arm ends, ids and numbers
# only): refusal_score on all 430 eval prompts; on the seed-0 arms (and aligned) greedy answers to
# a third of them (102 harmful) judged by the rules (refusal) and the harm judge.

VW := build/experiment/v3
VR := results/v3
V3_MODEL ?= qwen2.5-coder-0.5b
# The regime (step 1 of the issue): the audit run showed that 160 random rows of this pool at 1
# epoch already take harmful P(refusal) from 26.1 % to 7.2 % (greedy refusals 65.7 % -> 45.1 %),
# more than audit's top 160 do (8.7 %: short answers, fewer tokens to learn from); so the benign
# set is a random 160 and the recipe the paper's direction of more training: 2 epochs (42 steps).
V3_BENIGN ?= random-b0-s0
V3_BENIGN_N ?= 160
V3_TRAIN_ARGS ?= --template chat --epochs 2 --lr 1e-3 --batch-size 8 --max-length 128
V3_DOSE ?= 4 8 16 32
# Step 2 on seed 0: 8 random rows restored 28 % of the lost harmful P(refusal), 16 rows 74 %, so
# the budget where a better choice can show (30-70 %) is between: 12 rows (7 % of the mix).
V3_BUDGET ?= 12
V3_SEEDS ?= 0 1 2 3 4
V3_STRATEGIES ?= random diverse targeted
V3_DROP ?= 10
# The best strategy at V3_BUDGET over the seeds run: random (targeted lost on every seed, diverse
# tied with it), so the drop is tested with random's rows (droptop_random, paired with random).
V3_BEST ?= random
V3_GEN_SEEDS ?= 0
V3_SCORE_ARGS ?= --scorer refusal_score --batch-size 8 --dtype bfloat16
V3_GEN_ARGS ?= --scorer rules --scorer harm --max-new-tokens 48 --batch-size 16 --engine transformers --dtype bfloat16

V3_ARMS ?= aligned none-b0-s0 $(foreach b,$(V3_DOSE),random-b$(b)-s0) \
  $(foreach s,$(V3_SEEDS),$(foreach st,$(V3_STRATEGIES),$(st)-b$(V3_BUDGET)-s$(s))) \
  $(foreach s,$(V3_SEEDS),droptop-b0-s$(s) droprand-b0-s$(s) droptop_$(V3_BEST)-b$(V3_BUDGET)-s$(s))
V3_ARM_FILES := $(foreach a,$(sort $(V3_ARMS)),$(VR)/arms/$(a).parquet)

.PHONY: experiment-v3 v3-arm v3-summary
.PRECIOUS: $(VW)/picked/%.parquet $(VW)/train/%.parquet $(VW)/models/%/safesample_config.json \
           $(VW)/scored/%.parquet $(VW)/judged/%.parquet

experiment-v3: $(V3_ARM_FILES)
	$(MAKE) v3-summary

v3-arm: $(VR)/arms/$(ARM).parquet

# --- data: the audit run's eval prompts and pool, the regime's benign set ---------------------
$(VW)/data/benign.parquet: $(AW)/audited.parquet experiments/audit_arms.py
	$(PY) experiments/audit_arms.py $< --arm $(V3_BENIGN) --n $(V3_BENIGN_N) -o $@

$(VW)/pool.clustered.parquet: $(AW)/data/eval.parquet
	mkdir -p $(@D)
	$(SS) label $(AW)/data/pool.parquet --all-harmful --safe-responses $(Q) -o - \
	  | $(SS) embed - $(Q) -o - \
	  | $(SS) cluster - --reference $(AW)/data/refs.parquet --reference-col category_coarse $(Q) -o $@

# --- one arm: picks, training set, adapter ------------------------------------------------------
v3_kind = $(word 1,$(subst -, ,$(1)))
v3_strategy = $(patsubst droptop_%,%,$(call v3_kind,$(1)))
v3_benign = $(if $(filter drop%,$(call v3_kind,$(1))),$(VW)/data/$(if $(filter droprand,$(call v3_kind,$(1))),droprand-s$(call seed,$(1)),droptop).parquet,$(VW)/data/benign.parquet)
v3_select = $(if $(filter targeted,$(1)),--strategy targeted --against $(VW)/data/benign.parquet,--strategy $(1))

$(VW)/data/droptop.parquet: $(VW)/data/benign.parquet
	$(PY) experiments/audit_arms.py $(AW)/audited.parquet --arm droptop$(V3_DROP)-b0-s0 --base $< -o $@

$(VW)/data/droprand-s%.parquet: $(VW)/data/benign.parquet
	$(PY) experiments/audit_arms.py $(AW)/audited.parquet --arm droprand$(V3_DROP)-b0-s$* --base $< -o $@

$(VW)/picked/%.parquet: $(VW)/pool.clustered.parquet $(VW)/data/benign.parquet
	mkdir -p $(@D) $(VR)/selection
	$(SS) select $< $(call v3_select,$(call v3_strategy,$*)) --budget $(call budget,$*) --seed $(call seed,$*) \
	  --exclude $(AW)/data/eval.parquet --report $(VR)/selection/$*.json $(Q) -o $@

.SECONDEXPANSION:
$(VW)/train/%.parquet: $$(call v3_benign,$$*) $$(if $$(filter-out 0,$$(call budget,$$*)),$(VW)/picked/$$(subst droptop_,,$$*).parquet)
	mkdir -p $(@D)
	$(if $(filter-out 0,$(call budget,$*)),$(SS) mix $(call v3_benign,$*) $(VW)/picked/$(subst droptop_,,$*).parquet \
	  --seed $(call seed,$*) --safety-budget $(call budget,$*) $(Q) -o $@,cp $(call v3_benign,$*) $@)

$(VW)/models/%/safesample_config.json: $(VW)/train/%.parquet
	mkdir -p $(VW)/models
	$(SS) finetune $< --model $(V3_MODEL) $(V3_TRAIN_ARGS) --seed $(call seed,$*) $(Q) -o $(VW)/models/$*

v3_model = $(if $(filter aligned,$(1)),$(V3_MODEL),$(VW)/models/$(1))
v3_model_dep = $(if $(filter aligned,$(1)),$(AW)/data/eval.parquet,$(VW)/models/$(1)/safesample_config.json)
v3_generates = $(if $(filter aligned,$(1)),yes,$(filter $(call seed,$(1)),$(V3_GEN_SEEDS)))

$(VW)/scored/%.parquet: $$(call v3_model_dep,$$*)
	mkdir -p $(@D)
	$(SS) judge $(AW)/data/eval.parquet --model $(call v3_model,$*) $(V3_SCORE_ARGS) $(Q) -o $@

$(VW)/judged/%.parquet: $$(call v3_model_dep,$$*)
	mkdir -p $(@D)
	$(SS) judge $(AW)/data/eval_gen.parquet --model $(call v3_model,$*) $(V3_GEN_ARGS) $(Q) -o $@

# The arm's committed result (no prerequisite on purpose: an existing one is never redone).
$(VR)/arms/%.parquet:
	$(MAKE) $(VW)/scored/$*.parquet $(if $(call v3_generates,$*),$(VW)/judged/$*.parquet)
	$(PY) experiments/arm_results.py --scored $(VW)/scored/$*.parquet \
	  $(if $(call v3_generates,$*),--judged $(VW)/judged/$*.parquet) -o $@

# How near each arm's safety rows lie to the harmful eval prompts (a diagnostic of the strategies).
V3_PICKED = $(sort $(foreach a,$(basename $(notdir $(wildcard $(VR)/arms/*.parquet))),\
  $(if $(filter-out 0,$(call budget,$(a))),$(VW)/picked/$(subst droptop_,,$(a)).parquet)))
$(VW)/data/eval.emb.parquet: $(AW)/data/eval.parquet
	mkdir -p $(@D)
	$(SS) embed $< --text prompt $(Q) -o $@

# The arm files are prerequisites too: a new arm adds a pick set older than the last picks.json.
$(VR)/picks.json: $(VW)/pool.clustered.parquet $(VW)/data/eval.emb.parquet $(V3_PICKED) \
                  $(wildcard $(VR)/arms/*.parquet) experiments/picks_vs_eval.py
	$(PY) experiments/picks_vs_eval.py $(VW)/pool.clustered.parquet $(VW)/data/eval.emb.parquet $(V3_PICKED) -o $@

v3-summary: $(VR)/picks.json
	$(PY) experiments/summarize.py $(VR)/arms --labels $(AW)/data/eval.parquet --out $(VR) \
	  --pairs "diverse:random,targeted:random,targeted:diverse,droptop:droprand,droptop_$(V3_BEST):$(V3_BEST)" \
	  --command "make experiment-v3 V3_BUDGET=$(V3_BUDGET) V3_BENIGN=$(V3_BENIGN)"
	$(SS) report $(VR)/summary.json $(wildcard $(VR)/selection/*.json) -o $(VR)/report.html
