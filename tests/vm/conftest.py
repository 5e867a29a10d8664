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

    def machine(self, name: str, disks: list, **kw):
        from hostvm import Machine
        m = Machine(self.dir, os.path.join(IMAGE, "vmlinuz"), os.path.join(IMAGE, "initrd.img"),
                    disks, accel=self.accel or "tcg", name=name, **kw)
        self.machines.append(m)
        return m

    def libvirt_machine(self, uri: str, name: str, disks: list, **kw):
        from hostvm import LibvirtMachine
        m = LibvirtMachine(uri, self.dir, os.path.join(IMAGE, "vmlinuz"),
                           os.path.join(IMAGE, "initrd.img"), disks, accel=self.accel or "tcg",
                           name=name, **kw)
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


def probe_accel(fleet) -> tuple:
    """KVM only if a probe guest boots under it; TCG otherwise.  (accel, why).
    A working KVM prints the kernel's banner within a second or two: none in
    PROBE_BANNER_S means KVM cannot run this guest here, without waiting for
    a boot that never comes."""
    forced = os.environ.get("VMSNAP_VM_ACCEL")
    if forced:
        return forced, "VMSNAP_VM_ACCEL"
    if not os.path.exists("/dev/kvm"):
        return "tcg", "no /dev/kvm"
    fleet.accel = "kvm"
    root = fleet.overlay("probe-root.qcow2", os.path.join(IMAGE, "root.qcow2"), "qcow2")
    m = fleet.machine("kvm-probe", [("root", root, "qcow2")], append="earlyprintk=ttyS0")
    try:
        m.start()
        deadline = time.monotonic() + PROBE_BANNER_S
        while "Linux version" not in m.console_tail(100000):
            if m.proc.poll() is not None:
                return "tcg", "QEMU -accel kvm exited: %s" % m.stderr().strip()[-200:]
            if time.monotonic() > deadline:
                return "tcg", "no kernel output within %d s under KVM" % PROBE_BANNER_S
            time.sleep(0.2)
        m.wait_agent(PROBE_AGENT_S)
        return "kvm", "a probe guest booted under KVM"
    except (RuntimeError, TimeoutError) as e:
        return "tcg", "the KVM probe guest did not boot: %s" % str(e).splitlines()[0]
    finally:
        m.kill()
        os.unlink(root)


PROBE_BANNER_S = 8
PROBE_AGENT_S = 40


@pytest.fixture(scope="session")
def accel(fleet):
    t0 = time.monotonic()
    fleet.accel, why = probe_accel(fleet)
    figure("accelerator", "%s (%s)" % (fleet.accel, why))
    figure("KVM probe took", round(time.monotonic() - t0, 1), "s")
    return fleet.accel


LIBVIRT_WAIT_S = 180


@pytest.fixture(scope="session")
def libvirt():
    """The URI of the libvirtd that make test-vm started (tools/vm/libvirtd.sh),
    or the reason it could not start (a str beginning with "no libvirt: ")."""
    d = os.environ.get("VMSNAP_VM_LIBVIRT")
    if not d:
        return "no libvirt: VMSNAP_VM_LIBVIRT is not set (make test-vm sets it)"
    uri = "qemu:///system?socket=%s/sock/libvirt-sock" % d
    deadline = time.monotonic() + LIBVIRT_WAIT_S
    while time.monotonic() < deadline:
        if os.path.exists(d + ".failed"):
            with open(d + ".why") as f:
                return "no libvirt: " + " ".join(f.read().split())[:400]
        try:
            with open(d + ".pid") as f:
                if f.read().strip():
                    return uri
        except OSError:
            pass
        time.sleep(0.5)
    return "no libvirt: libvirtd did not answer within %d s" % LIBVIRT_WAIT_S
