# GridLedger build. `make run` and `make test` are all a newcomer needs; both set up the
# virtual environment and generate the protobuf code first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(shell find protos -name '*.proto' | sort)
GEN_STAMP := gen/.generated
DEVNET_DIR ?= .devnet
PYTEST_ARGS ?=

.PHONY: all venv protos images run test test-unit test-integration lint fmt bench bench-quick clean devnet-down

all: protos

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The editable install maps the package `gridledger` onto gen/; it must exist first.
	mkdir -p gen/gridledger && touch gen/gridledger/__init__.py
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

protos: $(GEN_STAMP)

$(GEN_STAMP): $(PROTO_FILES) $(STAMP)
	rm -rf gen/gridledger && mkdir -p gen
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
		--pyi_out=gen $(PROTO_FILES)
	find gen/gridledger -type d -exec touch {}/__init__.py \;
	touch $@

# Container images of every role (docker or podman; docs/operations.md, "Build the images").
images: $(STAMP)
	deploy/images/build.sh

run: protos
	$(BIN)/gridctl demo --dir $(DEVNET_DIR)

devnet-down: protos
	$(BIN)/gridctl devnet down --dir $(DEVNET_DIR)

test: protos
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: protos
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: protos
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: protos
	$(BIN)/ruff check .
	cd protos && ../$(BIN)/buf lint

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: protos
	$(BIN)/python -m bench --profile standard

bench-quick: protos
	$(BIN)/python -m bench --profile quick

clean:
	rm -rf $(VENV) gen build *.egg-info .pytest_cache .ruff_cache .hypothesis bench/reports
