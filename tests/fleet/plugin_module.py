"""Loads one of the collection's modules as plain Python, for tests of its
functions: with ansible-core installed, as it is; without it, against empty
stand-ins for the ansible packages it imports at the top (put back after)."""

import contextlib
import importlib.util
import os
import sys
import types

MODULES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "contrib", "ansible", "plugins", "modules")


@contextlib.contextmanager
def plugin_module(name):
    saved = {k: sys.modules.get(k) for k in ("ansible", "ansible.module_utils",
                                             "ansible.module_utils.basic")}
    try:
        import ansible.module_utils.basic  # noqa: F401
    except ImportError:
        for k in saved:
            sys.modules[k] = types.ModuleType(k)
        sys.modules["ansible.module_utils.basic"].AnsibleModule = None
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(MODULES, name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        for k, m in saved.items():
            if m is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = m
