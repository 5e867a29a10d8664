"""A real QEMU guest (`make test-vm`): the image tools/vm/build-image.sh made,
booted by tools/vm/hostvm.py.  Collected only when VMSNAP_VM_IMAGE names the
image's directory (make test-vm sets it), so `make test` never boots a VM.

Every QEMU started here is killed in teardown (and gets SIGKILL if this
process dies); every disk image made here is removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

IMAGE = os.environ.get("VMSNAP_VM_IMAGE")
collect_ignore = [] if IMAGE else ["test_vm.py"]

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools", "vm"))

FIGURES: list = []


def figure(name: str, value, unit: str = "") -> None:
    """A measured figure: printed at the end of the run and saved in
    build/vm/figures.json."""
    FIGURES.append({"figure": name, "value": value, "unit": unit})
    print("VM-FIGURE %s = %s %s" % (name, value, unit), flush=True)


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("vm figures")
    for f in FIGURES:
        v = f["value"]
        v = "%.3f" % v if isinstance(v, float) else v
        terminalreporter.write_line("%-58s %s %s" % (f["figure"], v, f["unit"]))
    out = os.environ.get("VMSNAP_VM_FIGURES")
    if out:
        with open(out, "w") as fh:
            json.dump(FIGURES, fh, indent=1)


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="vmsnap-vm-", dir=os.environ.get("VMSNAP_VM_WORK") or None)
    yield d
    if os.environ.get("VMSNAP_VM_KEEP"):
        print("kept", d)
        return
    shutil.rmtree(d, ignore_errors=True)


class Fleet:
    """Every machine this run starts, for the teardown."""

    def __init__(self, workdir):
        self.dir = workdir
        self.machines: list = []
        self.accel = None

    def machine(self, name: str, disks: list):
        from hostvm import Machine
        m = Machine(self.dir, os.path.join(IMAGE, "vmlinuz"), os.path.join(IMAGE, "initrd.img"),
                    disks, accel=self.accel or "tcg", name=name)
        self.machines.append(m)
        return m

    def overlay(self, name: str, backing: str, fmt: str) -> str:
        path = os.path.join(self.dir, name)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", fmt, path],
                       check=True)
        return path

    def overlay_path(self, name: str) -> str:
        """Where QEMU is to create a new overlay (blockdev-snapshot-sync)."""
        return os.path.join(self.dir, name)

    def kill_all(self):
        for m in self.machines:
            m.kill()


@pytest.fixture(scope="session")
def fleet(workdir):
    f = Fleet(workdir)
    yield f
    f.kill_all()


def probe_accel(fleet) -> str:
    """KVM only if a probe guest boots under it within 25 s; TCG otherwise."""
    forced = os.environ.get("VMSNAP_VM_ACCEL")
    if forced:
        return forced
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    fleet.accel = "kvm"
    root = fleet.overlay("probe-root.qcow2", os.path.join(IMAGE, "root.qcow2"), "qcow2")
    m = fleet.machine("kvm-probe", [("root", root, "qcow2")])
    try:
        m.start()
        m.wait_agent(25)
        return "kvm"
    except (RuntimeError, TimeoutError) as e:
        print("KVM probe failed, using TCG: %s" % str(e).splitlines()[0], flush=True)
        return "tcg"
    finally:
        m.kill()
        os.unlink(root)


@pytest.fixture(scope="session")
def accel(fleet):
    t0 = time.monotonic()
    fleet.accel = probe_accel(fleet)
    figure("accelerator", fleet.accel)
    figure("KVM probe took", round(time.monotonic() - t0, 1), "s")
    return fleet.accel
