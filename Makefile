# The two commands at the top of README.md: `make demo` and `make test`.
# Both install what they need first (Debian packages, then a virtualenv with
# pinned Python packages) and are safe to run again.

VENV ?= .venv
APT_PACKAGES := openvswitch-switch python3-openvswitch python3-venv iproute2 \
                iputils-ping procps ethtool iperf3 tcpdump traceroute
# Debian trees (deploy/mkroot) and booting them with systemd-nspawn
APT_PACKAGES += debootstrap systemd-container
# QEMU guests in the lab (mbx-lab vm-add --kind qemu; TCG, no KVM needed)
APT_PACKAGES += qemu-system-x86 qemu-utils

.PHONY: demo test unit deps apt venv lab-down clean bench bench-tiny fuzz soak guest-image units-check \
        vagrant-box vagrant-test vagrant-down

bench: deps $(VENV)/.bench-installed
	$(VENV)/bin/python -m lab.bench

# Every bench module once at tiny sizes (about 2 minutes; part of `make test`).
bench-tiny: deps $(VENV)/.bench-installed
	$(VENV)/bin/pytest -q tests/integration/test_bench_tiny.py

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-bench.txt
	touch $@

demo: deps guest-image
	$(VENV)/bin/mbx-lab demo

# The lab's QEMU guest image (lab/guest): a Debian tree from deploy/mkroot,
# the stock kernel, a small initramfs and init; cached under
# /var/cache/mbx/guest (a few minutes cold, seconds when cached).
guest-image: deps
	$(VENV)/bin/python -m lab.guest

# The tests of the lab's behaviour run twice: with one physical controller
# for every host, then with one on each host (the logical controller in both).
LAB_SUITE := tests/integration/test_lab.py tests/integration/test_firewall.py \
             tests/integration/test_services.py tests/integration/test_migration.py \
             tests/integration/test_check_modes.py tests/integration/test_failover.py \
             tests/integration/test_cluster.py tests/integration/test_recovery.py \
             tests/integration/test_validation.py tests/integration/test_migration_last_vm.py

# tests/integration/test_qemu.py (a QEMU guest's live migrations) runs once,
# in the first pass; every other lab test uses namespace VMs.
test: deps guest-image
	$(VENV)/bin/pytest -q tests
	MBX_TEST_CONTROLLERS=per-host $(VENV)/bin/pytest -q $(LAB_SUITE)

# Coverage-guided fuzzing of the parsers of untrusted input, FUZZ_SECONDS per
# target, from the corpus in fuzz/corpus (docs/reliability.md); FUZZ_ARGS=--grow
# keeps inputs that reach new code.  CI runs a short version
# (tests/integration/test_fuzz_short.py).
FUZZ_SECONDS ?= 120
fuzz: deps
	$(VENV)/bin/python -m fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

# The soak (lab/soak.py): SOAK_MINUTES of traffic under churn, migrations and
# restarts on a lab of its own; writes build/soak/soak.json and soak.png.
# CI runs a 3-minute version (tests/integration/test_soak_short.py).
SOAK_MINUTES ?= 30
soak: deps $(VENV)/.bench-installed
	$(VENV)/bin/python -m lab.soak --minutes $(SOAK_MINUTES) --out build/soak

# mbx's systemd units on a booted Debian tree (deploy/mkroot, deploy/install.sh,
# systemd-nspawn; docs/deploy.md); part of `make test`.  About 1.5 minutes
# with a cached tree, 2.5-4.5 without (debootstrap and apt).
units-check: deps
	$(VENV)/bin/pytest -q tests/integration/test_units_nspawn.py

# The Vagrant lab (vagrant/, docs/deploy.md "Vagrant"): a controller node and
# three hypervisors as TCG VMs, provisioned with deploy/install.sh.  Run by
# hand, not in CI: vagrant-test takes 13-24 minutes and about 4 GB of memory
# on a busy 2-core machine (docs/deploy.md has its output).
VAGRANT_APT_PACKAGES := vagrant vagrant-libvirt libvirt-daemon-system \
                        libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base \
                        iptables e2fsprogs

vagrant-box: deps
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(VAGRANT_APT_PACKAGES)"
	MBX_PIP=$(abspath $(VENV))/bin/pip MBX_PYTHON=$(abspath $(VENV))/bin/python vagrant/mkbox

vagrant-test: vagrant-box
	MBX_PIP=$(abspath $(VENV))/bin/pip $(VENV)/bin/python vagrant/run.py test

vagrant-down:
	$(VENV)/bin/python vagrant/run.py down

unit: deps
	$(VENV)/bin/pytest -q tests/unit

deps: apt venv

apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg setup.py
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

lab-down:
	$(VENV)/bin/mbx-lab down

clean:
	rm -rf $(VENV) *.egg-info
