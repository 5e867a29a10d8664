# The fleet tests: 3 hosts on one machine, each an sshd in its own mount
# namespace on its own 127.0.0.x, driven by ansible-core; and the collection's
# own checks (ansible-test sanity, ansible-lint).
# Included from the Makefile:  include mk/fleet.mk
FLEET_VENV ?= build/fleet-venv
FLEET_TIMEOUT ?= 900

$(FLEET_VENV)/bin/ansible-playbook:
	$(PYTHON) -m venv $(FLEET_VENV)
	$(FLEET_VENV)/bin/pip install -q ansible-core

fleet-deps: ## system packages of the fleet tests (openssh-server), when root and missing
	@if [ ! -x /usr/sbin/sshd ]; then \
	  test "$$(id -u)" = 0 || { echo "test-fleet needs root to install openssh-server"; exit 1; }; \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server; \
	  rc=$$?; rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

test-fleet: build fleet-deps $(FLEET_VENV)/bin/ansible-playbook ## Ansible consistency group on 3 local sshd hosts, with faults (root)
	@run=$$(date +%s%N); echo "fleet run $$run"; \
	VMSNAP_FLEET_RUN=$$run VMSNAP_FLEET_ANSIBLE=$(abspath $(FLEET_VENV))/bin/ansible-playbook \
	  timeout -k 10 $(FLEET_TIMEOUT) $(PY) -m pytest -q -p no:cacheprovider tests/fleet; \
	  rc=$$?; $(PY) -m tests.fleet.harness sweep $$run; exit $$rc

lint-ansible: ## ansible-test sanity and ansible-lint --profile production on contrib/ansible (tools from pip)
	sh tools/lint-ansible.sh $(PYTHON)

.PHONY: fleet-deps test-fleet lint-ansible
