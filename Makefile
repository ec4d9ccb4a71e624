# One command each: set up, run the demo end to end, run the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup img2dataset demo test test-fast lint clip-retrieval
setup: img2dataset
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch and torchvision as a pair that import together on this machine kind (see README)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[test,report,review,demo,onnx,attack,ray,s3,gcs]'

# img2dataset pins old webdataset and pandas: it gets an environment of its own, used by `dedup download`
img2dataset:
	$(PY) -m venv .venv-img2dataset
	.venv-img2dataset/bin/pip install --upgrade pip
	WANDB_MODE=disabled .venv-img2dataset/bin/pip install img2dataset

demo:
	$(BIN)/dedup demo demo-data
	$(BIN)/dedup run --config configs/demo.toml

# the whole suite, the 20 slowest tests listed at the end (CI runs this)
test:
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --durations=20

# the tests not marked slow: every command at small size, in a few minutes; run it while working
test-fast:
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 -m "not slow" --durations=10

lint:
	$(BIN)/ruff check dedup tests benchmarks pipelines configs
	$(BIN)/ruff format --check dedup tests benchmarks pipelines configs
	$(BIN)/mypy dedup

# clip-retrieval in its own environment (it pins numpy<2, pyarrow<16, webdataset<0.3): benchmarks only
clip-retrieval:
	$(PY) -m venv .venv-clip-retrieval
	.venv-clip-retrieval/bin/pip install torch==2.14.1 torchvision==0.29.1
	WANDB_MODE=disabled .venv-clip-retrieval/bin/pip install clip-retrieval==2.45.0 'setuptools<70'  # its clip package imports pkg_resources
