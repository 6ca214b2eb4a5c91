#!/usr/bin/env bash
# Installs a Debian package unless what it provides is already there.
#
#   ./scripts/debian-package.sh <package> <file or command it provides>
#
# Used by test.sh (libfaketime) and bench-shapes.sh (wrk). Runs apt-get
# (with sudo when not root), retrying once after `apt-get update`.
set -euo pipefail
package="$1"
provides="$2"
if [ -e "$provides" ] || command -v "$provides" >/dev/null 2>&1; then
    exit 0
fi
echo "debian-package.sh: $provides is missing; installing the Debian package $package"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
$sudo_cmd apt-get install -y "$package" >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update >/dev/null 2>&1 && $sudo_cmd apt-get install -y "$package" >/dev/null; } ||
    { echo "debian-package.sh: cannot install $package (apt-get install -y $package)" >&2; exit 1; }
