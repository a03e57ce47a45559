# Disaggregated LLM serving: build, run, test, benchmark.
# `make help` lists the targets.

SHELL       := bash
GO          ?= go
PYTHON      ?= python3
VENV        ?= .venv
BIN         ?= bin
HOST        ?= 127.0.0.1
PORT        ?= 8000
FUZZTIME    ?= 20000x
GOFLAGS_RACE ?= -race
# go-nvml's cgo declares NVML functions that CUDA 13 deprecates: no warnings for those.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## build bin/worker (CPU backend; cgo for dlopen of native libraries)
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/worker ./cmd/worker

.PHONY: run
run: build native ## local disaggregated cluster on the embedded model (2 context, 1 generation worker, proxy on $(HOST):$(PORT)); shows requests answered, serves until Ctrl-C
	@scripts/run-local.sh $(BIN)/worker $(HOST) $(PORT)

.PHONY: e2e
e2e: native ## real-process disaggregated tests: 2 context workers, 1 generation worker and the proxy, over UCX and NIXL, with kills and freezes
	$(GO) test -race -count=1 -run 'TestDisagg' ./cmd/worker/

.PHONY: launch
launch: build native ## the deployment of configs/ on this node: one worker per GPU (CUDA_VISIBLE_DEVICES), then the proxy
	scripts/launch.sh

.PHONY: client
client: ## send scripts/prompts.json through the proxy of configs/disagg_config.yaml
	$(PYTHON) scripts/disagg_client.py -c configs/disagg_config.yaml -p scripts/prompts.json

.PHONY: bench-serve
bench-serve: ## serving benchmark of the proxy of configs/disagg_config.yaml (the `make run` cluster): 64 streaming requests, 128 in, 64 out, 16 req/s, concurrency 16; more flags in BENCH_ARGS
	$(PYTHON) scripts/bench_serve.py -c configs/disagg_config.yaml --num-prompts 64 --input-len 128 --output-len 64 --request-rate 16 --max-concurrency 16 $(BENCH_ARGS)

.PHONY: setup
setup: venv native ## install everything the tests need (apt packages, project virtualenv)

.PHONY: venv
venv: $(VENV)/.done ## project-local Python virtualenv with the test clients (openai, pytest)
$(VENV)/.done: scripts/requirements.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
	@touch $@

.PHONY: native
native: ## native libraries for the transceiver tests (UCX from Debian, NIXL wheel into the venv)
	@if [ -x scripts/setup-native.sh ]; then scripts/setup-native.sh; fi

.PHONY: test
test: setup ## run every test (race detector on), the Python SDK tests, and each fuzz target briefly
	$(GO) vet ./...
	$(GO) test $(GOFLAGS_RACE) -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz

.PHONY: test-short
test-short: ## unit tests only, no setup
	$(GO) test -count=1 ./...

.PHONY: fuzz
fuzz: ## run every fuzz target for $(FUZZTIME) (an execution count: Go 1.26's -fuzztime deadline can fail a clean run on a loaded machine, golang/go#75804)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)' $$dir/*_test.go 2>/dev/null | awk '{print $$2}'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg > /tmp/fuzz-$$f.log 2>&1 || { cat /tmp/fuzz-$$f.log; exit 1; }; \
	  done; \
	done

.PHONY: fixtures
fixtures: ## regenerate testdata/ with Hugging Face transformers (needs ~4 GB of PyPI downloads)
	@test -x .venv-fixtures/bin/python || $(PYTHON) -m venv .venv-fixtures
	.venv-fixtures/bin/pip install -q -r scripts/requirements-fixtures.txt
	.venv-fixtures/bin/python scripts/make_fixtures.py

.PHONY: cuda
cuda: ## CUDA backend: kernels for sm_90 (cuda/build/libdcu.a), bin/worker-cuda and cuda/build/cuda.test (CUDA 13.0 wheels into .venv-cuda when no system CUDA)
	@test -x .venv-cuda/bin/python || command -v nvcc >/dev/null || scripts/cuda/setup.sh
	scripts/cuda/build.sh

.PHONY: bench-model
bench-model: ## CPU backend micro-benchmarks (tiny model)
	$(GO) test -run='^$$' -bench=. -benchtime=2s ./worker/compute/cpu/

.PHONY: bench-transfer
bench-transfer: setup ## KV transceivers, UCX and NIXL: write bandwidth by block size and count beside ucx_perftest, then fixed costs (write, notification, push round trip)
	GO=$(GO) bash scripts/bench_transfer.sh

.PHONY: fmt
fmt: ## gofmt every Go file
	gofmt -w $$(git ls-files '*.go')

.PHONY: lint
lint: ## gofmt check and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

.PHONY: probe
probe: build ## print this machine's capabilities as JSON
	$(BIN)/worker probe

.PHONY: clean
clean: ## remove build outputs
	rm -rf $(BIN)
