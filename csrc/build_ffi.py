"""cffi build script for the native core (API mode).

The declarations come from csrc/vmsnap.h, between its cdef markers, so the
header is the one source of truth for C and Python alike.
"""

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# The core is every C file here (the C tests live in tests/c/).
SOURCES = sorted(f for f in os.listdir(HERE) if f.endswith(".c"))


def _version() -> str:
    about = os.path.join(HERE, "..", "src", "vmsnap_native", "_version.py")
    with open(about, encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _cdef() -> str:
    with open(os.path.join(HERE, "vmsnap.h"), encoding="utf-8") as f:
        text = f.read()
    body = text.split("/* cffi-cdef-begin */", 1)[1].split("/* cffi-cdef-end */", 1)[0]
    return body


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "vmsnap_native._vmsnap_core",
    '#include "vmsnap.h"',
    sources=[os.path.join("csrc", s) for s in SOURCES],
    include_dirs=["csrc"],
    define_macros=[("VMSNAP_VERSION", '"%s"' % _version())],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
