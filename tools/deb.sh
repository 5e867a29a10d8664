#!/bin/sh
# usage: tools/deb.sh
# Builds the Debian package from a copy of the source tree (the checkout's
# tracked and new files, nothing ignored) in build/deb/src, so the checkout
# stays clean, then runs lintian on it: any error fails, warnings are listed.
# Result: build/deb/vmsnap_VERSION_ARCH.deb.
set -eu
# Debian's own tools and Python, whatever else is first in PATH (pyenv, a venv)
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
out=build/deb
rm -rf "$out"
mkdir -p "$out/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | \
        tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$out/src"
else
    tar --exclude=./build --exclude=./.venv --exclude=./dist -cf - . | tar -xf - -C "$out/src"
fi
# the person who builds it is its maintainer when they say so (Debian's own
# variables); otherwise the placeholder in debian/control stands
if [ -n "${DEBEMAIL:-}" ]; then
    who="${DEBFULLNAME:-vmsnap builder} <$DEBEMAIL>"
    sed -i "s|^Maintainer: .*|Maintainer: $who|" "$out/src/debian/control"
    sed -i "s|^ -- [^>]*>| -- $who|" "$out/src/debian/changelog"
fi
(cd "$out/src" && dpkg-buildpackage -b -us -uc) >"$out/build.log" 2>&1 || {
    tail -n 40 "$out/build.log"; echo "deb: dpkg-buildpackage failed (log: $out/build.log)" >&2; exit 1; }
deb=$(ls "$out"/vmsnap_*.deb)
echo "deb: $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Depends\|Recommends\|Suggests\|Installed-Size\):/  \1:/p'
# errors fail the build; warnings and info are printed for the record
lintian --fail-on error --display-info --tag-display-limit 0 "$deb" | tee "$out/lintian.txt"
echo "lintian: $(grep -c '^E:' "$out/lintian.txt" || true) errors, $(grep -c '^W:' "$out/lintian.txt" || true) warnings"
