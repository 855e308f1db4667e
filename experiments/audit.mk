# Does `audit` find the benign rows that erode safety? He et al.'s protocol at CPU scale (issue 23).
#
#   make experiment-models && make experiment-audit
#
# Qwen2.5-Coder-0.5B-Instruct (aligned by its makers) audits every benign instruction row we have
# (alpaca_gpt4_demo + gpteacher + alpaca_seed_tasks, decontaminated against the eval prompts),
# then one LoRA arm fine-tunes on each cut of AUDIT_N rows (no safety rows): the top of audit's
# ranking, its bottom, random draws (seeds), and a random draw matched to the top rows' response
# lengths (is the score more than length?). The recipe is results/qwen's (LoRA r=8 q/v, lr 1e-3,
# 1 epoch, batch 8, max length 128, chat template); audit scores the rows cut at the same 128
# tokens, so it sees what training sees. Eval: the qwen run's prompts (same prepare.py cut):
# refusal_score on all 430, greedy answers (48 tokens, rules + harm judges) on a third of them.
#
# Each finished arm's per-prompt figures (ids and numbers only, no text) are written to
# results/audit/arms/<arm>.parquet: commit them as they come, and a later run on another machine
# picks up where this one stopped (an arm whose file exists is not run again).

AW := build/experiment/audit
AR := results/audit
AUDIT_MODEL ?= qwen2.5-coder-0.5b
AUDIT_N ?= 160
AUDIT_ARMS ?= aligned top-b0-s0 random-b0-s0 lenmatched-b0-s0 bottom-b0-s0 random-b0-s1 random-b0-s2
AUDIT_ARGS ?= --template chat --max-tokens 128 --batch-size 8
AUDIT_TRAIN_ARGS ?= --template chat --epochs 1 --lr 1e-3 --batch-size 8 --max-length 128
# bf16 forward passes (2.1x fp32 on this CPU): the base model's 430 scores agree with fp32's
# (results/audit/dtype_check.json, `make audit-dtype-check`); training stays fp32.
AUDIT_SCORE_ARGS ?= --scorer refusal_score --batch-size 8 --dtype bfloat16
AUDIT_GEN_ARGS ?= --scorer rules --scorer harm --max-new-tokens 48 --batch-size 16 --engine transformers --dtype bfloat16
AUDIT_PREPARE_ARGS ?= --pool-n 1500 --benign-n 160 --harmful-n 300 --safe-n 100 --helpful-n 30 --advbench \
                      --gen-share 0.34

.PHONY: experiment-audit audit-pool audit-dtype-check
.PRECIOUS: $(AW)/train/%.parquet $(AW)/models/%/safesample_config.json $(AW)/scored/%.parquet \
           $(AW)/judged/%.parquet

experiment-audit: $(AR)/summary.md

$(AW)/data/eval.parquet: experiments/prepare.py | $(VENV)/.installed
	$(PY) experiments/prepare.py --shared $(SHARED) --out $(AW)/data $(AUDIT_PREPARE_ARGS)

$(AW)/data/benign_pool.parquet: $(AW)/data/eval.parquet experiments/benign_pool.py
	$(PY) experiments/benign_pool.py --shared $(SHARED) --eval $< --out $@

# ~7,000 rows; forward passes only, stopped at the chosen layer, cached per row (resumable).
$(AW)/audit_run.parquet: $(AW)/data/benign_pool.parquet
	$(SS) audit $< --model $(AUDIT_MODEL) $(AUDIT_ARGS) -o $@

# The committed result of the audit (ids and numbers, and the run's layer and AUROC): with it a
# fresh machine rebuilds the audited pool without running the model. No prerequisite on purpose:
# an existing file is never redone.
$(AR)/pool_scores.parquet:
	$(MAKE) $(AW)/audit_run.parquet
	$(PY) experiments/arm_results.py --audit $(AW)/audit_run.parquet -o $@

$(AW)/audited.parquet: $(AW)/data/benign_pool.parquet $(AR)/pool_scores.parquet
	$(PY) experiments/arm_results.py --join $(AW)/data/benign_pool.parquet $(AR)/pool_scores.parquet -o $@

audit-pool: $(AW)/audited.parquet

$(AW)/train/%.parquet: $(AW)/audited.parquet experiments/audit_arms.py
	$(PY) experiments/audit_arms.py $< --arm $* --n $(AUDIT_N) -o $@

$(AW)/models/%/safesample_config.json: $(AW)/train/%.parquet
	mkdir -p $(AW)/models
	$(SS) finetune $< --model $(AUDIT_MODEL) $(AUDIT_TRAIN_ARGS) --seed $(call seed,$*) $(Q) -o $(AW)/models/$*

# the model an arm is judged with: the base model for `aligned`, else the arm's adapter
audit_model = $(if $(filter aligned,$(1)),$(AUDIT_MODEL),$(AW)/models/$(1))
audit_model_dep = $(if $(filter aligned,$(1)),$(AW)/data/eval.parquet,$(AW)/models/$(1)/safesample_config.json)

.SECONDEXPANSION:
$(AW)/scored/%.parquet: $$(call audit_model_dep,$$*)
	mkdir -p $(@D)
	$(SS) judge $(AW)/data/eval.parquet --model $(call audit_model,$*) $(AUDIT_SCORE_ARGS) $(Q) -o $@

$(AW)/judged/%.parquet: $$(call audit_model_dep,$$*)
	mkdir -p $(@D)
	$(SS) judge $(AW)/data/eval_gen.parquet --model $(call audit_model,$*) $(AUDIT_GEN_ARGS) $(Q) -o $@

# The arm's small, committed result: per-prompt numbers and verdicts by id, no text. No
# prerequisite on purpose: an arm whose result exists (committed earlier) is not run again.
$(AR)/arms/%.parquet:
	$(MAKE) $(AW)/scored/$*.parquet $(AW)/judged/$*.parquet
	$(PY) experiments/arm_results.py --scored $(AW)/scored/$*.parquet --judged $(AW)/judged/$*.parquet -o $@

$(AR)/summary.md: $(foreach a,$(AUDIT_ARMS),$(AR)/arms/$(a).parquet) experiments/summarize_audit.py \
                  | $(AW)/audited.parquet
	$(PY) experiments/summarize_audit.py $(AR)/arms --eval $(AW)/data/eval.parquet --audited $(AW)/audited.parquet \
	  --out $(AR) --command "make experiment-audit AUDIT_ARMS='$(AUDIT_ARMS)'"

# Do bf16 scores agree with fp32's? The base model scored both ways on every eval prompt.
$(AW)/scored_fp32/aligned.parquet: $(AW)/data/eval.parquet
	mkdir -p $(@D)
	$(SS) judge $< --model $(AUDIT_MODEL) --scorer refusal_score --batch-size 8 --dtype float32 $(Q) -o $@

$(AR)/dtype_check.json: $(AW)/scored_fp32/aligned.parquet $(AW)/scored/aligned.parquet experiments/dtype_agreement.py
	$(PY) experiments/dtype_agreement.py $(AW)/scored_fp32/aligned.parquet $(AW)/scored/aligned.parquet \
	  --eval $(AW)/data/eval.parquet -o $@

audit-dtype-check: $(AR)/dtype_check.json
