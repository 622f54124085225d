# serveform: `make up` on a fresh machine sets everything up and brings the dev stack up;
# `make test` is the test command CI runs (.ci/run).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export PULUMI_SKIP_UPDATE_CHECK := 1
STACK ?= dev
PYTEST_ARGS ?=
# The k8s stack's secrets passphrase on this checkout: generated once, readable by you only, used
# only by `make k8s-up` / `make k8s-down` (the published passphrase is for the local backend only).
K8S_PASSPHRASE_FILE := $(CURDIR)/.serveform/k8s-local.passphrase

.PHONY: setup setup-dev up down test bench image k8s-up k8s-down

# Everything the tests need (also k8s-local and actionlint).
setup:
	tools/setup.sh all

# Only what the dev stack needs: the Python environment, Pulumi and Caddy.
setup-dev:
	tools/setup.sh dev

up: setup-dev
	serveform up --stack $(STACK) --yes
	serveform endpoints --stack $(STACK)

down: setup-dev
	serveform destroy --stack $(STACK) --yes

test: setup
	python -m pytest $(PYTEST_ARGS)

bench: setup
	for b in bench/*.py; do python "$$b" || exit $$?; done

# serveform's runtime image (gateway, scaler, CPU services) as an OCI archive in ~/.cache/serveform/images.
image:
	tools/setup.sh k8s
	tools/k8s/host-packages.sh image
	serveform image build

# The Kubernetes backend on k8s-local: a real control plane on loopback with kwok GPU nodes.
k8s-up: $(K8S_PASSPHRASE_FILE)
	tools/setup.sh k8s
	tools/k8s-local.sh start
	eval "$$(tools/k8s-local.sh env)" && export PULUMI_BACKEND_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY && \
	  PULUMI_CONFIG_PASSPHRASE_FILE=$(K8S_PASSPHRASE_FILE) serveform up --stack k8s --yes && \
	  PULUMI_CONFIG_PASSPHRASE_FILE=$(K8S_PASSPHRASE_FILE) serveform endpoints --stack k8s

k8s-down: setup-dev $(K8S_PASSPHRASE_FILE)
	-eval "$$(tools/k8s-local.sh env)" && export PULUMI_BACKEND_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY && \
	  PULUMI_CONFIG_PASSPHRASE_FILE=$(K8S_PASSPHRASE_FILE) serveform destroy --stack k8s --yes
	tools/k8s-local.sh stop

# 256 random bits, created with umask 077 so no other user ever sees it (not even briefly).
$(K8S_PASSPHRASE_FILE):
	mkdir -p -m 0700 $(dir $@)
	umask 077 && head -c 32 /dev/urandom | base64 > $@.tmp && mv $@.tmp $@
