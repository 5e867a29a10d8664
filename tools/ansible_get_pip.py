"""Stands in for the pip bootstrap script that ansible-test downloads from
its own server (which CI cannot reach): installs pip with ensurepip, then
the packages ansible-test asked for, from the package index as usual.

ansible-test runs it as ``python get_pip_X_Y.py [pip options] PACKAGES``
in an empty virtual environment (see ansible_test's requirements.py)."""

import subprocess
import sys

# get-pip.py's own switches; plain pip does not know them
OWN = {"--no-setuptools", "--no-wheel"}

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"],
                      stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"]
                      + [a for a in sys.argv[1:] if a not in OWN])
