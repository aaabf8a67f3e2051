# The two commands of README.md, and the tools behind them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_PREFIX := .tools/node
BUF := $(NPM_PREFIX)/node_modules/.bin/buf
BUF_VERSION := 1.75.0

.PHONY: run test lint typecheck proto proto-check buf-lint install bench deploy-check monitoring-rules

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,train]'
	touch $(STAMP)

install: $(STAMP)

## run: the decision hub, every service in one process, SQLite, demo catalog and model.
run: $(STAMP)
	NEXTBEST_LOG_FORMAT=$${NEXTBEST_LOG_FORMAT:-console} $(BIN)/nextbest serve --target all --demo

## test: the whole test suite (SQLite always; PostgreSQL when it answers on 127.0.0.1:5432).
test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy libs services tools tests

## proto: regenerate the Python stubs under libs/protos from proto/ (never edit them by hand).
proto: $(STAMP)
	rm -rf libs/protos/nextbest
	mkdir -p libs/protos
	$(BIN)/python -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=libs/protos --grpc_python_out=libs/protos \
		--mypy_out=libs/protos --mypy_grpc_out=libs/protos \
		$$(find proto -name '*.proto' | sort)
	find libs/protos/nextbest -type d -exec touch {}/__init__.py \;

## proto-check: fail when the committed stubs drift from proto/.
proto-check: proto
	git diff --exit-code --stat -- libs/protos
	test -z "$$(git status --porcelain -- libs/protos)"

$(BUF):
	npm install --silent --no-save --no-audit --no-fund --prefix $(NPM_PREFIX) @bufbuild/buf@$(BUF_VERSION)

buf-lint: $(BUF)
	$(BUF) lint

bench: $(STAMP)
	$(BIN)/nextbest bench --help

## deploy-check: render every kustomization and validate it against Kubernetes $(KUBERNETES_VERSION)
## (strict schema; the Prometheus Operator's objects, which it has no schema for, against the
## operator's documented fields), check and unit-test the alert rules with promtool, lint
## deploy/Dockerfile, check the Tiltfile and the manifests' properties.
KUBERNETES_VERSION ?= 1.31.0
KUSTOMIZATIONS := base overlays/dev overlays/production overlays/production-monitoring overlays/production-stream
DEPLOY_BUILD := build/deploy
MONITORING := deploy/kubernetes/components/monitoring

deploy-check: $(STAMP)
	@mkdir -p $(DEPLOY_BUILD)
	@set -e; for k in $(KUSTOMIZATIONS); do \
		out=$(DEPLOY_BUILD)/$$(echo $$k | tr / -).yaml; \
		kubectl kustomize deploy/kubernetes/$$k > $$out; \
		$(BIN)/python -m tests.deploy.operator_crds $$out $$out.builtin; \
		echo "== kubernetes-validate $$k ($(KUBERNETES_VERSION), strict)"; \
		$(BIN)/kubernetes-validate --strict --quiet -k $(KUBERNETES_VERSION) $$out.builtin | tee $(DEPLOY_BUILD)/validate.log; \
		if grep -q . $(DEPLOY_BUILD)/validate.log; then echo "$$k: not valid (see above)"; exit 1; fi; \
	done
	@echo "== promtool: the alert rules, their unit tests, the PrometheusRule made from them"
	promtool check rules $(MONITORING)/nextbest.rules.yaml
	promtool test rules tests/deploy/monitoring/alerts.test.yaml
	$(BIN)/python -m tools.prometheus_rule --check
	@echo "== hadolint deploy/Dockerfile"
	$(BIN)/hadolint deploy/Dockerfile
	@echo "== Tiltfile and manifests"
	NEXTBEST_TEST_REQUIRE_KUBECTL=1 NEXTBEST_TEST_REQUIRE_PROMTOOL=1 $(BIN)/pytest -q \
		tests/deploy/test_tiltfile.py tests/deploy/test_manifests.py tests/deploy/test_monitoring.py

## monitoring-rules: write the PrometheusRule of the monitoring component from its rule file.
monitoring-rules: $(STAMP)
	$(BIN)/python -m tools.prometheus_rule
