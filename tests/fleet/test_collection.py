"""The collection as Ansible sees it: ansible-doc renders every module, and
each module's documented options are its argument_spec."""

import json
import os
import re
import subprocess

import pytest

ANSIBLE = os.environ.get("VMSNAP_FLEET_ANSIBLE")
pytestmark = pytest.mark.skipif(not ANSIBLE, reason="needs ansible-core (make test-fleet)")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = os.path.join(REPO, "contrib", "ansible", "plugins", "modules")


@pytest.mark.parametrize("name", ["vmsnap", "vmsnap_group_verdict", "vmsnap_snapshot_step"])
def test_ansible_doc_renders_and_matches_the_argument_spec(name, tmp_path):
    env = dict(os.environ, LC_ALL="C.UTF-8", ANSIBLE_HOME=str(tmp_path))
    p = subprocess.run([os.path.join(os.path.dirname(ANSIBLE), "ansible-doc"), "--json",
                        "-M", MODULES, name], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    doc = json.loads(p.stdout)[name]
    assert doc["doc"]["short_description"] and doc["examples"] and doc["return"]
    with open(os.path.join(MODULES, name + ".py")) as f:
        source = f.read()
    spec = source[source.index("argument_spec=dict("):source.index("supports_check_mode=True")]
    assert set(re.findall(r"^\s{12}(\w+)=dict\(", spec, re.M)) == set(doc["doc"]["options"])
