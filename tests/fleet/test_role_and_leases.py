"""The collection on the controller alone (a local connection, no sshd, no
root): the role's argument specification stops a play before any host runs
anything, and the module's freeze/thaw carry the lease's session id."""

import json
import os
import re
import subprocess
import sys

import pytest

ANSIBLE = os.environ.get("VMSNAP_FLEET_ANSIBLE")
pytestmark = pytest.mark.skipif(not ANSIBLE, reason="needs ansible-core (make test-fleet)")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# a stand-in for vmsnap: logs its argv, answers from a script of replies
FAKE = r'''#!%(python)s
import json, sys
with open(%(log)r, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
replies = json.load(open(%(replies)r))
for words, rc, out in replies:
    if all(w in sys.argv[1:] for w in words):
        print(json.dumps(out))
        sys.exit(rc)
sys.exit(99)
'''


@pytest.fixture
def controller(tmp_path):
    """(run(playbook text, extra vars) -> (rc, output), calls() -> vmsnap's argvs, replies path)."""
    coll = tmp_path / "collections" / "ansible_collections" / "vmsnap"
    coll.mkdir(parents=True)
    os.symlink(os.path.join(REPO, "contrib", "ansible"), coll / "fleet")
    log, replies = tmp_path / "calls.log", tmp_path / "replies.json"
    replies.write_text("[]")
    fake = tmp_path / "vmsnap"
    fake.write_text(FAKE % {"python": sys.executable, "log": str(log), "replies": str(replies)})
    fake.chmod(0o755)
    python = os.path.join(os.path.dirname(ANSIBLE), "python")
    (tmp_path / "inventory.yml").write_text(json.dumps({"all": {"hosts": {
        "h1": {"ansible_connection": "local", "ansible_python_interpreter": python},
        "h2": {"ansible_connection": "local", "ansible_python_interpreter": python}}}}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"),
               ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), LC_ALL="C.UTF-8")

    def run(playbook, extra):
        (tmp_path / "play.yml").write_text(playbook)
        (tmp_path / "vars.json").write_text(json.dumps(dict(extra, vmsnap_fake=str(fake),
                                                             state_dir=str(tmp_path / "state"))))
        p = subprocess.run([ANSIBLE, "-i", str(tmp_path / "inventory.yml"),
                            str(tmp_path / "play.yml"), "-e", "@%s" % (tmp_path / "vars.json")],
                           capture_output=True, text=True, env=env, timeout=300)
        return p.returncode, p.stdout + p.stderr

    def calls():
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    return run, calls, replies


ROLE_PLAY = """
- hosts: all
  gather_facts: false
  roles:
    - role: vmsnap.fleet.consistency_group
      vars:
        consistency_group_vmsnap_bin: "{{ vmsnap_fake }}"
"""


@pytest.mark.parametrize("extra, named", [
    ({}, "consistency_group_snapshot_command"),                        # forgotten
    ({"consistency_group_snapshot_command": ["snap"],
      "consistency_group_lease": "soon"}, "consistency_group_lease"),  # mistyped
    ({"consistency_group_snapshot_command": []}, "consistency_group_snapshot_command is empty"),
])
def test_a_missing_or_bad_role_variable_stops_the_play_before_any_host_runs(
        controller, extra, named):
    run, calls, _ = controller
    rc, out = run(ROLE_PLAY, extra)
    assert rc != 0 and named in out, out
    assert calls() == [], "vmsnap ran on a host: %s" % calls()


LEASE_PLAY = """
- hosts: h1
  gather_facts: false
  tasks:
    - name: freeze
      vmsnap.fleet.vmsnap:
        command: freeze
        lease: 5
        vmsnap_bin: "{{ vmsnap_fake }}"
        state_dir: "{{ state_dir }}"
      register: frozen
    - name: thaw (the session the freeze returned)
      vmsnap.fleet.vmsnap:
        command: thaw
        vmsnap_bin: "{{ vmsnap_fake }}"
        state_dir: "{{ state_dir }}"
      register: thawed
      ignore_errors: true
    - name: thaw again, no session known any more
      vmsnap.fleet.vmsnap:
        command: thaw
        vmsnap_bin: "{{ vmsnap_fake }}"
        state_dir: "{{ state_dir }}"
      register: plain
    - name: report
      ansible.builtin.copy:
        dest: "{{ results_file }}"
        content: "{{ {'frozen': frozen, 'thawed': thawed, 'plain': plain} | to_json }}"
        mode: "0600"
"""

# keys Ansible adds itself (stderr_lines: from stderr)
ANSIBLES_OWN = {"changed", "failed", "invocation", "warnings", "deprecations", "exception",
                "stdout_lines", "stderr_lines"}


def documented_return_keys():
    """The top-level keys of the module's RETURN block."""
    with open(os.path.join(REPO, "contrib", "ansible", "plugins", "modules", "vmsnap.py")) as f:
        source = f.read()
    block = source.split('RETURN = r"""', 1)[1].split('"""', 1)[0]
    return set(re.findall(r"^(\w+):", block, re.M))


def test_freeze_returns_the_session_and_thaw_ends_that_one_or_says_it_expired(controller):
    run, calls, replies = controller
    replies.write_text(json.dumps([
        [["freeze"], 0, {"status": "frozen", "session": "s-42", "guardian_pid": 1,
                         "timeout": 5, "record": "r", "mounts": [], "errors": []}],
        [["thaw", "--session", "s-42"], 1, {"status": "expired", "session": "s-42",
                                            "filesystems": []}],
        [["thaw"], 0, {"status": "nothing", "filesystems": []}],
    ]))
    results_file = os.path.join(os.path.dirname(str(replies)), "results.json")
    rc, out = run(LEASE_PLAY, {"results_file": results_file})
    assert rc == 0, out
    with open(results_file) as f:
        results = json.load(f)
    assert results["frozen"]["session"] == "s-42"
    assert results["thawed"]["failed"] and results["thawed"]["status"] == "expired"
    assert results["plain"]["session"] is None and results["plain"]["status"] == "nothing"
    undocumented = {k for r in results.values() for k in r
                    if not k.startswith("_ansible") and k not in ANSIBLES_OWN} \
        - documented_return_keys()
    assert not undocumented, "returned but not in RETURN: %s" % sorted(undocumented)
    argvs = calls()
    assert argvs[0][0] == "freeze"
    assert argvs[1][:3] == ["thaw", "--session", "s-42"], argvs
    assert "--session" not in argvs[2], argvs           # known no more: a plain thaw
    assert "the lease had already run out" in out and "s-42" in out
