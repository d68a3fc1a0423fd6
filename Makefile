# The two commands a new user runs after a fresh clone (both create what they need):
#   make demo   build the default bundle (the embedded student of the embedded reference model) and screen sample images
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench-preprocess clean

# One install for everything (runtime + host toolchain + test tools). Every pip call goes through
# constraints.txt: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[convert,openvino,dev,archive,dicom]'
	$(BIN)/python -c "import sys, torch; v = torch.__version__; sys.exit(None if v.startswith('2.13.0') else 'torch ' + v + ' got installed instead of 2.13.0')"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edge-retina demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench-preprocess: $(STAMP)
	$(BIN)/python benchmarks/bench_preprocess.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache
