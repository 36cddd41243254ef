#!/usr/bin/env bash
# The offline image set's emoji: Noto emoji PNGs (64 px) with names and categories, from
# the npm package emoji-datasource-google@16.0.0 (MIT data, Apache-2.0 images), unpacked
# into neuroscribe's cache. Idempotent; needs npm and the npm registry (a package
# registry), nothing else. neuroscribe finds them with `neuroscribe.vision.sources`.
set -euo pipefail
VERSION=16.0.0
CACHE=${NEUROSCRIBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/neuroscribe}
DEST="$CACHE/images/emoji-datasource-google-$VERSION"
if [ -f "$DEST/emoji.json" ] && [ -d "$DEST/img/google/64" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_images: npm is not installed; the offline image set will use the photos only" >&2
    exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "emoji-datasource-google@$VERSION" >/dev/null)
tar xzf "$TMP/emoji-datasource-google-$VERSION.tgz" -C "$TMP" \
    package/emoji.json package/LICENSE package/img/google/64
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.partial"
mv "$TMP/package" "$DEST.partial"
mv "$DEST.partial" "$DEST"
echo "fetch_images: $(ls "$DEST/img/google/64" | wc -l) emoji images in $DEST"
