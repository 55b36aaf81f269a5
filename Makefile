# The whole set-up on a fresh machine is `make run` or `make test`; both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASETS ?= ../shared/datasets
RUNS ?= runs

.PHONY: install run test pytest nbtest check docs bench clean

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

# main job: face extraction on the FaceForensics++ sample when present, else on rendered demo clips
run: install
	@if [ -d "$(DATASETS)/ffpp" ]; then data="$(DATASETS)/ffpp"; \
	else $(BIN)/deepfake-mlops demo $(RUNS)/demo-data >/dev/null && data=$(RUNS)/demo-data; fi; \
	echo "extracting faces from $$data"; \
	$(BIN)/deepfake-mlops extract "$$data" --out $(RUNS)/faces

test: install pytest nbtest

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

# rendered notebooks: nbdev-docs (quarto) where it exists, else nbconvert HTML into _docs/ (offline)
docs: install
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev-docs; \
	else $(BIN)/python tools/render_docs.py --out _docs; fi

bench: install
	$(BIN)/python benchmarks/extraction.py --data $(DATASETS)/ffpp

clean:
	rm -rf $(RUNS) _docs _proc
