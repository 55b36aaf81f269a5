# The whole set-up on a fresh machine is `make run` or `make test`; both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASETS ?= ../shared/datasets
RUNS ?= runs

.PHONY: install sagemaker-runtime serve-sagemaker run test pytest nbtest check docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the package with its test and notebook tools, then the face-detector weights (checksum-verified, cached)
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)
	$(BIN)/deepfake-mlops weights

# SageMaker's own runtime beside .venv: the PyTorch containers' torch and toolkits (runtime/requirements.txt says
# where it differs from the images). TorchServe needs Java 17 (Debian: openjdk-17-jre-headless).
RUNTIME_VENV := .venv-sagemaker
RUNTIME_STAMP := $(RUNTIME_VENV)/.installed
$(RUNTIME_STAMP): runtime/requirements.txt
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RUNTIME_VENV)/bin/pip install --quiet -r runtime/requirements.txt
	@command -v java >/dev/null || (echo "TorchServe needs Java 17: apt-get install openjdk-17-jre-headless" && exit 1)
	touch $(RUNTIME_STAMP)

sagemaker-runtime: $(RUNTIME_STAMP)

# a model.tar.gz (or registry reference) served as an endpoint would serve it: make serve-sagemaker MODEL=deepfake-detection:latest
MODEL ?= deepfake-detection:latest
serve-sagemaker: install sagemaker-runtime
	$(BIN)/deepfake-mlops serve-sagemaker $(MODEL) --runtime $(RUNTIME_VENV) --root $(RUNS)/local

# main job: the whole pipeline on this machine (local engine): extract, train, evaluate, gate, register,
# with the executed orchestration notebook and its HTML as the report. Without DATA it runs on rendered
# demo clips (a smoke test); real data: make run DATA=../shared/datasets/ffpp
# --log-output streams what the cells print (each step as it starts and ends, the jobs' progress) to the terminal
# while they run; the progress bar would only say which cell runs. The HTML is for readers: outputs only, no code
# and no front matter (the executed .ipynb keeps both).
# RUNTIME=.venv-sagemaker runs the jobs in SageMaker's own runtime (make sagemaker-runtime builds it)
DATA ?=
RUNTIME ?=
REPORT := $(RUNS)/report
run: install $(if $(RUNTIME),sagemaker-runtime,)
	@mkdir -p $(REPORT)
	$(BIN)/papermill nbs/run_pipeline.ipynb $(REPORT)/run_pipeline.ipynb --cwd . --log-output --no-progress-bar \
	  -p target local -p local_root $(RUNS)/local $(if $(DATA),-p data $(DATA),) $(if $(RUNTIME),-p runtime $(RUNTIME),)
	$(BIN)/python tools/render_docs.py report $(REPORT)/run_pipeline.ipynb --docs _docs

# every test, SageMaker's runtime included (tests/test_sagemaker_runtime.py skips without it)
test: install sagemaker-runtime pytest nbtest

pytest: install
	$(BIN)/pytest

nbtest: install
	$(BIN)/nbdev-test --n-workers 2

# notebooks are the source: they must be clean, and the package must be what they export
check: install
	$(BIN)/nbdev-clean
	$(BIN)/nbdev-export
	@git diff --exit-code --stat -- nbs deepfake_mlops || \
	  (echo "notebooks not clean or package out of sync: run nbdev-clean and nbdev-export, then commit" && exit 1)
	@test -z "$$(git status --porcelain --untracked-files=all -- deepfake_mlops)" || \
	  (echo "nbdev-export created files that are not committed:" && git status --porcelain -- deepfake_mlops && exit 1)

# rendered notebooks: nbdev-docs (quarto) where it exists, else the same nbdev processing rendered offline into _docs/
# (tools/render_docs.py: navigation, signatures and parameter tables, outputs; no network); the index links to the report
docs: install
	@if command -v quarto >/dev/null 2>&1; then echo "docs: nbdev-docs (quarto)"; $(BIN)/nbdev-docs; \
	else echo "docs: tools/render_docs.py (no quarto)"; $(BIN)/python tools/render_docs.py site --out _docs --report $(REPORT)/run_pipeline.html; fi

bench: install
	$(BIN)/python benchmarks/extraction.py --data $(DATASETS)/ffpp

clean:
	rm -rf $(RUNS) _docs _proc
