# unipts: `make install run` on a fresh clone installs and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow mutation bench bench-search bench-deploy bench-scale deepsparse-env pretrain clean

install: $(STAMP)

# torch and torchvision first, exactly these versions (this machine keeps them on local disk).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/unipts-prune $(ARGS)

# Tests run in TEST_JOBS processes (pytest-xdist), one CPU thread each: most of a test's time is a
# command's start-up and small single-threaded work, so two at once nearly halve the wall time on 2 cores.
TEST_JOBS ?= 2

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n $(TEST_JOBS) --dist worksteal $(ARGS)

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n $(TEST_JOBS) --dist worksteal -m slow $(ARGS)

# Mutation testing of the engine (sparse/, objectives.py, search/genetic.py; not in CI): mutmut copies the
# sources to mutants/ (git-ignored), runs each mutant against the fast unit tests that reach the mutated
# function ([tool.mutmut] in pyproject.toml), then prints the score per module (BENCHMARKS.md, "Mutation testing").
# Some 40 minutes on 2 CPU cores; a second run re-tests only what changed, MUTANTS='<names or globs>' re-tests those.
mutation: $(STAMP)
	$(BIN)/pip install --quiet -e '.[mutation]'
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/mutmut run --max-children 1 $(MUTANTS) > /dev/null || true
	$(BIN)/python benchmarks/mutation_report.py --survivors

# The CIFAR-10 grids (BENCHMARKS.md): benchmarks/grids/cifar10_resnet20.yaml, or another with ARGS="--grid <name>";
# needs the CIFAR-10 archive (UNIPTS_CIFAR10).
bench: $(STAMP)
	UNIPTS_CIFAR10=$${UNIPTS_CIFAR10:-../shared/data/cifar10-jpeg.tar.gz} $(BIN)/python benchmarks/cifar10_grid.py $(ARGS)

bench-search: $(STAMP)
	$(BIN)/python benchmarks/bench_search.py $(ARGS)

# ResNet-50 at 224 px through the paper's ImageNet protocol, cut down and timed per image, projected to full
# size (BENCHMARKS.md); a 224 px folder is made once from the CIFAR-10 archive. On a GPU: ARGS="--device cuda".
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py --data $${UNIPTS_CIFAR10:-../shared/data/cifar10-jpeg.tar.gz} $(ARGS)

# Export sizes and CPU latency, dense vs 90% sparse (BENCHMARKS.md); DeepSparse timings need `make deepsparse-env`.
bench-deploy: $(STAMP)
	$(BIN)/python benchmarks/bench_deploy.py $(ARGS)

# DeepSparse 1.8.0 (end-of-life; pins numpy 1.x and onnx 1.14) in its own environment, apart from .venv.
DS_VENV := .venv-deepsparse
deepsparse-env: $(DS_VENV)/.installed

$(DS_VENV)/.installed:
	$(PYTHON) -m venv $(DS_VENV)
	$(DS_VENV)/bin/pip install --quiet --upgrade pip
	$(DS_VENV)/bin/pip install --quiet deepsparse==1.8.0 sparsezoo==1.8.1 numpy==1.26.4 onnx==1.14.1 onnxruntime==1.32.0
	touch $@

pretrain: $(STAMP)
	$(BIN)/unipts-pretrain $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache mutants
