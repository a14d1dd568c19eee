# modelswarm - the two commands a new user needs:  make demo   and   make test
# Everything else is a step of those two, runnable on its own.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
LOCK ?= requirements/lock.txt
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_FORCE_COLOR ?= 0
SCENARIOS ?= default

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# ------------------------------------------------------------------------------------------------ set-up steps
.PHONY: engine
engine: ## Install Docker/debootstrap on this Debian/Ubuntu host if missing; start dockerd if none answers.
	@bash scripts/engine-bootstrap.sh

$(VENV)/.installed: $(LOCK) pyproject.toml
	@echo "venv: installing the pinned toolchain from $(LOCK) into $(VENV)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip==26.3
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(LOCK)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	@$(VENV)/bin/ansible-galaxy collection install -r requirements.yml | tail -n 1
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create the virtualenv with the pinned toolchain (CLI: .venv/bin/modelswarm).

.PHONY: lock
lock: ## Re-resolve requirements/toolchain.in into requirements/lock.txt and lock-el7.txt.
	@bash scripts/lock.sh

.PHONY: contract
contract: venv ## Regenerate playbooks/group_vars/all/contract.yml from modelswarm/contract.py.
	@python -m modelswarm.contract --write

# ------------------------------------------------------------------------------------------------------- the lab
.PHONY: lab-up lab-down lab-status
lab-up: venv ## Bring up the three lab hosts (idempotent).
	@modelswarm lab up
lab-down: venv ## Remove the lab's containers, network and volumes.
	@modelswarm lab down
lab-status: venv ## Show what exists of the lab.
	@modelswarm lab status

.PHONY: kit
kit: venv ## Build the lab image kit from the Debian base and save the air-gapped bundle (.lab/bundle).
	@modelswarm images build
	@modelswarm images bundle

# --------------------------------------------------------------------------------------------------- main job
.PHONY: demo
demo: engine venv lab-up kit ## Bring up the lab, build the swarm, deploy the platform and a demo model.
	@ansible-playbook -i inventory/lab playbooks/site.yml
	@ansible -i inventory/lab all -m ansible.builtin.ping -o
	@ansible -i inventory/lab leader -m ansible.builtin.command -a "docker node ls" | tail -n +2
	@ansible -i inventory/lab leader -m ansible.builtin.command -a "docker service ls" | tail -n +2
	@modelswarm deploy examples/models/iris -i inventory/lab
	@modelswarm status -i inventory/lab
	@addresses=$$(modelswarm lab status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["vip"], " ".join(n["address"] for n in s["nodes"].values()))'); \
	 set -- $$addresses; vip=$$1; shift; \
	 echo "demo: the platform runs on a three-manager swarm. The console, through NGINX on any node:"; \
	 echo "        https://$$1/   https://$$2/   https://$$3/   (CA: .secrets/pki/ca.crt)"; \
	 echo "      or through the floating VIP, held by one live node and moved when it dies: https://$$vip/"; \
	 echo "        (which node holds it: curl -s http://$$vip/healthz)"; \
	 echo "      sign in as admin with the password in .secrets/console-admin-password"; \
	 echo "      a key to predict with (printed once, on the last line): modelswarm keys create alice"; \
	 echo "      a prediction from the demo model, through the VIP (or any node), with a key:"; \
	 echo "        curl -s -X POST -H \"Authorization: Bearer \$$(cat .secrets/keys/controller-deploy.key)\" \\"; \
	 echo "          -H 'Content-Type: application/json' \\"; \
	 echo "          -d '{\"sepal_length\": 6.7, \"sepal_width\": 3.0, \"petal_length\": 5.2, \"petal_width\": 2.3}' \\"; \
	 echo "          http://$$vip/models/iris/predict"
	@echo "      inspect: make lab-status; remove: make down"

.PHONY: down
down: ## Remove the lab (containers, network, volumes); keeps the images for a fast next start.
	@if [ -x $(BIN)/modelswarm ] && docker info >/dev/null 2>&1; then modelswarm lab down; \
	 else echo "down: no venv or no Docker daemon: nothing to remove"; fi

# --------------------------------------------------------------------------------------------------------- tests
.PHONY: lint
lint: venv ## ruff, yamllint, ansible-lint (production profile), playbook syntax check, promtool check rules.
	@bash scripts/test-packages.sh
	ruff check .
	ruff format --check .
	yamllint --strict .
	ansible-lint --offline
	ansible-playbook -i inventory/production --syntax-check playbooks/*.yml
	promtool check rules roles/platform/files/prometheus/alerts.yml

.PHONY: unit
unit: venv ## Unit tests (no Docker needed; real PostgreSQL and NGINX on loopback, installed if missing).
	@bash scripts/test-packages.sh
	pytest tests/unit

.PHONY: molecule
molecule: engine venv ## Molecule scenarios on the lab (create, converge, idempotence, verify, destroy).
	@for s in $(SCENARIOS); do echo "molecule: scenario $$s"; molecule test -s $$s; done

.PHONY: test
test: engine venv lint unit molecule ## Lint, unit tests and the molecule scenarios.

.PHONY: test-ha
test-ha: engine venv ## The HA scenario: node loss, leader loss, rollouts and Docker restarts under load, quorum loss.
	@$(MAKE) --no-print-directory molecule SCENARIOS=ha

.PHONY: bench
bench: engine venv kit ## Benchmarks on a lab of their own (prints figures, writes .lab/benchmarks.json).
	@python benchmarks/bench.py all
	@python benchmarks/bench.py down

.PHONY: cis
cis: venv ## CIS Docker Benchmark v1.6 sections 5 and 7 on the lab's leader, read-only (INVENTORY=, NODE=all).
	@python -m modelswarm.tooling.cis -i $(or $(INVENTORY),inventory/lab) $(if $(NODE),--node $(NODE))

.PHONY: test-el7
test-el7: engine ## The cluster scenario with the CentOS 7 lock (ansible-core 2.16, .venv-el7), then the HA cases on it.
	@$(MAKE) --no-print-directory molecule VENV=.venv-el7 LOCK=requirements/lock-el7.txt SCENARIOS=legacy-core
