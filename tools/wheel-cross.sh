#!/bin/sh
# usage: tools/wheel-cross.sh ARCH PYTHON
# Cross-builds the wheel for ARCH (aarch64): the C core and the cffi module
# compiled with Debian's cross toolchain against Debian's Python headers for
# ARCH, packed with the package's Python files; then imports it and runs the
# tests that need no freeze under qemu-user, with Debian's Python for ARCH
# unpacked into a private sysroot (nothing is installed system-wide).
set -eu
arch=$1
py=$2
case $arch in
    aarch64) debarch=arm64 ;;
    *) echo "wheel-cross: unsupported ARCH $arch" >&2; exit 2 ;;
esac
pyver=3.11
work=build/$arch/wheel
rm -rf "$work"
mkdir -p "$work/debs"
work=$(cd "$work" && pwd)
sysroot=$work/sysroot

if ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
    dpkg --add-architecture "$debarch"
    apt-get update -qq
fi
(cd "$work/debs" && apt-get download -q \
    libpython$pyver-dev:$debarch libpython$pyver:$debarch libpython$pyver-stdlib:$debarch \
    libpython$pyver-minimal:$debarch python$pyver-minimal:$debarch python3-cffi-backend:$debarch \
    libc6:$debarch libffi8:$debarch zlib1g:$debarch libexpat1:$debarch libssl3:$debarch \
    libbz2-1.0:$debarch liblzma5:$debarch libsqlite3-0:$debarch libuuid1:$debarch \
    libcrypt1:$debarch libncursesw6:$debarch libtinfo6:$debarch libreadline8:$debarch \
    libgcc-s1:$debarch libzstd1:$debarch 2>/dev/null)
for d in "$work"/debs/*.deb; do dpkg -x "$d" "$sysroot"; done

# the cffi module's C source, from the one header, then the cross compile
"$py" - "$work/_vmsnap_core.c" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("build_ffi", "csrc/build_ffi.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.ffibuilder.emit_c_code(sys.argv[1])
PY
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/vmsnap_native/_version.py)
ext=_vmsnap_core.cpython-311-$arch-linux-gnu.so
$arch-linux-gnu-gcc -shared -fPIC -O2 -std=gnu11 -Wall -Wno-unused-parameter -Icsrc \
    -I"$sysroot/usr/include/python$pyver" -idirafter "$sysroot/usr/include" \
    -DVMSNAP_VERSION="\"$version\"" -o "$work/$ext" "$work/_vmsnap_core.c" \
    csrc/*.c -lpthread   # the core: every C file in csrc/, as in csrc/build_ffi.py

# the wheel: the host build's Python files, this extension, the ARCH tag
"$py" -m pip wheel -q . -w "$work/host" --no-deps
"$py" -m wheel unpack -d "$work/unpacked" "$work"/host/*.whl >/dev/null
pkg=$(ls -d "$work"/unpacked/*)
rm -f "$pkg"/vmsnap_native/_vmsnap_core*.so
cp "$work/$ext" "$pkg/vmsnap_native/"
sed -i "s/^Tag: .*/Tag: cp311-cp311-linux_$arch/" "$pkg"/*.dist-info/WHEEL
mkdir -p "$work/dist"
"$py" -m wheel pack -d "$work/dist" "$pkg" >/dev/null
raw=$(ls "$work"/dist/*.whl)
# auditwheel repairs only for the host's architecture; it analyses any.  Our
# wheel has no library to graft, so repairing is retagging: take the tag
# auditwheel finds the wheel consistent with, and set it.
tag=$(PATH=$(dirname "$py"):$PATH "$py" -m auditwheel show "$raw" 2>&1 | tr -d '\n' |
      sed -n 's/.*consistent with[^"]*"\([^"]*\)".*/\1/p')
case $tag in
    manylinux*) ;;
    *) echo "auditwheel finds no manylinux tag for $raw" >&2; exit 1 ;;
esac
"$py" -m wheel tags --remove --platform-tag "$tag" "$raw" >/dev/null
mkdir -p "$work/repaired"
mv "$work"/dist/*"$tag".whl "$work/repaired/"
whl=$(ls "$work"/repaired/*.whl)
echo "wheel: $whl"

# import it and run the tests that need no freeze, under qemu-user
"$py" -m zipfile -e "$whl" "$work/site"
"$py" -m pip install -q --target "$work/purelib" --only-binary=:all: --implementation cp \
    --python-version 3.11 --platform manylinux_2_17_$arch --platform manylinux2014_$arch \
    pytest hypothesis pytest-timeout
cp -r tests pyproject.toml "$work/"
cd "$work"
export PYTHONPATH="$work/site:$work/purelib:$sysroot/usr/lib/python3/dist-packages"
export PYTHONDONTWRITEBYTECODE=1
qemu-$arch -L "$sysroot" "$sysroot/usr/bin/python$pyver" -c \
    "import platform, vmsnap_native; print('imported vmsnap_native', vmsnap_native.__version__, 'on', platform.machine())"
qemu-$arch -L "$sysroot" "$sysroot/usr/bin/python$pyver" -m pytest -q -p no:cacheprovider \
    tests/test_core.py tests/test_process.py tests/test_config.py tests/test_mountinfo.py
