"""Loads one of the collection's modules or action plugins as plain Python,
for tests of its functions: with ansible-core installed, as it is; without
it, against minimal stand-ins for the ansible names it imports at the top
(put back after)."""

import contextlib
import importlib.util
import os
import sys
import types

PLUGINS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "contrib", "ansible", "plugins")
MODULES = os.path.join(PLUGINS, "modules")
ACTIONS = os.path.join(PLUGINS, "action")


def _to_text(v, errors=None):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


# what each kind of plugin imports: {module name: {attribute: stand-in}}
MODULE_IMPORTS = {"ansible": {}, "ansible.module_utils": {},
                  "ansible.module_utils.basic": {"AnsibleModule": None}}
ACTION_IMPORTS = {"ansible": {}, "ansible.errors": {
    "AnsibleActionFail": type("AnsibleActionFail", (Exception,), {})},
    "ansible.module_utils": {}, "ansible.module_utils.common": {},
    "ansible.module_utils.common.text": {},
    "ansible.module_utils.common.text.converters": {"to_text": _to_text},
    "ansible.plugins": {}, "ansible.plugins.action": {"ActionBase": object}}


@contextlib.contextmanager
def _loaded(path, name, imports):
    saved = {k: sys.modules.get(k) for k in imports}
    try:
        for k in imports:
            importlib.import_module(k)
    except ImportError:
        for k, attrs in imports.items():
            sys.modules[k] = types.ModuleType(k)
            for a, v in attrs.items():
                setattr(sys.modules[k], a, v)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        for k, m in saved.items():
            if m is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = m


def plugin_module(name):
    return _loaded(os.path.join(MODULES, name + ".py"), name, MODULE_IMPORTS)


def action_plugin(name):
    return _loaded(os.path.join(ACTIONS, name + ".py"), "action_" + name, ACTION_IMPORTS)
