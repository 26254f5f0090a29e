#!/bin/sh
# Installs Debian's Fashion-MNIST when it is missing and this user may install packages.
# Never fails the build: without it, the demo and the tests fall back to scikit-learn's digits.
if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist); using digits" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } ||
    echo "note: could not install dataset-fashion-mnist; using digits" >&2
exit 0
