# edge-se: `make demo` runs the pipeline on the embedded default, `make test` runs the suite.
# Every target that needs the virtual environment depends on $(STAMP), so a fresh clone needs nothing else.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN   ?= runs/demo

.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install the pinned dependencies (idempotent)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

system-deps:  ## install the Debian packages the tests need (chromium, qemu, cross g++, sshd; root, idempotent)
	bash scripts/system_deps.sh

TEST_WORKERS ?= 2
test: $(STAMP) system-deps  ## run the whole test suite (CI runs this) on $(TEST_WORKERS) pytest-xdist workers
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

lint: $(STAMP)  ## ruff and mypy
	$(VENV)/bin/ruff check edge_se quantize export device_bench pipeline studies latency benchmarks scripts tests
	$(VENV)/bin/mypy

demo: $(STAMP) system-deps arm-emu  ## the main job on the embedded default: configs/demo.toml -> $(RUN)/report.html
	@start=$$(date +%s); \
	$(VENV)/bin/edge-se run configs/demo.toml --out $(RUN); rc=$$?; \
	echo "make demo: $$(( $$(date +%s) - start )) s wall (exit $$rc); report: $(RUN)/report.html" | tee $(RUN)/demo_time.txt; \
	exit $$rc

report: $(STAMP)  ## (re)write report.md/report.html of RUN (default runs/demo)
	$(VENV)/bin/edge-se report $(RUN)

DEVICE ?= local
bench: $(STAMP)  ## time every artifact in EXPORT_OUT on DEVICE (local, qemu-aarch64, ssh://..., adb://...) -> results/bench.jsonl
	@shopt -s nullglob; arts=($(EXPORT_OUT)/*.pte $(EXPORT_OUT)/*.tflite); \
	if [ $${#arts[@]} -eq 0 ]; then echo "make bench: no artifacts in $(EXPORT_OUT); run make export first" >&2; exit 2; fi; \
	$(VENV)/bin/edge-se bench "$${arts[@]}" --device $(DEVICE) --out results/bench.jsonl

clean:  ## remove build outputs and runs (keeps .venv and .arm-emu)
	rm -rf runs results artifacts build *.egg-info .pytest_cache

.PHONY: help setup system-deps test lint demo report bench clean

# --- export: verified .pte/.tflite artifacts (owner: export/) ---------------------------------
EXPORT_MODEL  ?= mobilenetv3_small_100
EXPORT_OUT    ?= artifacts
EXPORT_CALIB  ?= random
EXPORT_MODELS ?= mobilenetv3_small_100,mobilenetv3_large_100,efficientnet_b0,seresnet50
EXPORT_RES    ?= 224

export: $(STAMP)  ## write EXPORT_MODEL's .pte and .tflite, fp32 and int8, checked, to EXPORT_OUT
	$(VENV)/bin/edge-se export $(EXPORT_MODEL) --format all --dtype all --out $(EXPORT_OUT) --calib $(EXPORT_CALIB)

bench-export: $(STAMP)  ## export wall time and sizes per model/format/dtype -> results/bench_export.{jsonl,md}
	$(PY) -m export.bench --models $(EXPORT_MODELS) --resolution $(EXPORT_RES) --calib $(EXPORT_CALIB) --results results

.PHONY: export bench-export

# --- device_bench: aarch64 emulation, native runner, devices (owned by device_bench) ----------
arm-emu-deps:  ## install the Debian packages arm-emu and the ssh tests need (root; idempotent)
	scripts/arm_emu.sh --deps

arm-emu: $(STAMP)  ## build the aarch64 emulation environment in .arm-emu/ (idempotent)
	PY=$(PY) scripts/arm_emu.sh

native-runner: $(STAMP)  ## build the host native ExecuTorch runner (build/device_bench/)
	$(PY) -m device_bench.native_build

devices: $(STAMP)  ## list the inventory's devices and probe them
	$(VENV)/bin/edge-se devices

.PHONY: arm-emu-deps arm-emu native-runner devices

# --- bench-peers: edge-se int8 vs the standard peer recipes (owner: benchmarks/peers/, issue 6) ---------
# TensorFlow (Keras applications + TFLiteConverter) lives only in .venv-peers, built from requirements-peers.lock.
PEERS_VENV   := .venv-peers
PEERS_STAMP  := $(PEERS_VENV)/.installed
PEERS_OUT    ?= artifacts/peers
PEERS_ROUNDS ?= 3
PEERS_ARGS   ?=

$(PEERS_STAMP): requirements-peers.lock
	test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-peers.lock
	touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)  ## build + time edge-se and peer int8/fp32 artifacts -> results/bench_peers.{jsonl,md}
	$(PY) -m benchmarks.peers.run --out $(PEERS_OUT) --results results --peers-python $(PEERS_VENV)/bin/python \
	  --rounds $(PEERS_ROUNDS) $(PEERS_ARGS)

.PHONY: bench-peers

# --- quantize (owner: quantisation engineer) -------------------------------------------------
QUANT_OUT ?= results/quant_bench.jsonl
# Minutes after which bench-quant starts no new cell (a rerun resumes where it stopped).
QUANT_BUDGET_MIN ?= 45

bench-quant: $(STAMP)  ## policy x engine x target matrix of int8 fidelity -> results/quant_bench.{jsonl,md}
	$(PY) -m quantize.bench --out $(QUANT_OUT) --table $(basename $(QUANT_OUT)).md --budget-min $(QUANT_BUDGET_MIN)

train-demo: $(STAMP)  ## train the default demo model (mobilenetv3_small_100, digits, 64 px) -> results/weights
	$(VENV)/bin/edge-se train mobilenetv3_small_100 --data digits --epochs 15 --resolution 64 \
	  --out results/weights/mobilenetv3_small_100_digits64.pt

.PHONY: bench-quant train-demo

bench-cli: $(STAMP)  ## edge-se --help wall time (farm-bench, paired with `import torch`) -> results/bench_cli.md
	PY=$(PY) EDGE_SE=$(VENV)/bin/edge-se bash scripts/bench_cli.sh

.PHONY: bench-cli

# --- bench-sweep: the local executor vs Ray on one config (owner: pipeline/executors.py) -------
SWEEP_CONFIG ?= configs/demo.toml
SWEEP_JOBS   ?=
bench-sweep: $(STAMP)  ## SWEEP_CONFIG under local, ray, then local again (run-to-run noise): wall, cells/min, p50 per cell -> results/bench_sweep.{md,jsonl}
	$(PY) scripts/bench_sweep.py --config $(SWEEP_CONFIG) --runs runs/bench_sweep --results results/bench_sweep \
	  $(if $(SWEEP_JOBS),--jobs $(SWEEP_JOBS))

.PHONY: bench-sweep

# --- bench-scale: latency tables and edge-se scale (owner: latency/) -----------------------------
SCALE_ARGS ?=
bench-scale: $(STAMP)  ## latency tables on local (pte/tflite x int8/fp32), held-out prediction error, edge-se scale -> results/bench_scale.{md,jsonl}
	$(PY) scripts/bench_scale.py --results results/bench_scale $(SCALE_ARGS)

bench-scale-emu: $(STAMP) system-deps arm-emu  ## the same tables on emulated aarch64 (instructions per inference, all four; COMBOS=tflite:int8 for some) -> results/bench_scale_qemu_aarch64.{md,jsonl}
	$(PY) scripts/bench_scale.py --device qemu-aarch64 --scale-target '' --work runs/bench_scale_qemu \
	  --results results/bench_scale_qemu_aarch64 --merge $(if $(COMBOS),--combos $(COMBOS)) $(SCALE_ARGS)

.PHONY: bench-scale bench-scale-emu
