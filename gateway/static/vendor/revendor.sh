#!/usr/bin/env bash
# Re-vendors the page's two libraries from the npm registry at the versions pinned below, with their
# licences, and rewrites SHA256SUMS. `revendor.sh --check` only verifies the files against SHA256SUMS.
#   marked     Markdown to HTML (it does not sanitise: its output always goes through DOMPurify)
#   dompurify  the HTML sanitiser
# To upgrade: change a version here, run this script, read the upstream changelog, commit the result.
set -euo pipefail
cd "$(dirname "$0")"

MARKED_VERSION=18.2.1
DOMPURIFY_VERSION=3.5.0

if [[ "${1:-}" == "--check" ]]; then
    exec sha256sum --check --strict --quiet SHA256SUMS
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# npm checks each tarball against the registry's sha512 integrity before it writes it.
(cd "$work" && npm pack --silent "marked@$MARKED_VERSION" "dompurify@$DOMPURIFY_VERSION" >/dev/null)
mkdir -p "$work/marked" "$work/dompurify"
tar -xzf "$work/marked-$MARKED_VERSION.tgz" -C "$work/marked"
tar -xzf "$work/dompurify-$DOMPURIFY_VERSION.tgz" -C "$work/dompurify"

rm -rf marked dompurify
mkdir -p marked dompurify
cp "$work/marked/package/lib/marked.esm.js" "$work/marked/package/LICENSE" marked/
cp "$work/dompurify/package/dist/purify.es.mjs" "$work/dompurify/package/LICENSE" dompurify/
printf 'marked %s\ndompurify %s\n' "$MARKED_VERSION" "$DOMPURIFY_VERSION" > VERSIONS
sha256sum marked/* dompurify/* VERSIONS > SHA256SUMS
echo "vendored marked $MARKED_VERSION and dompurify $DOMPURIFY_VERSION; checksums in $(pwd)/SHA256SUMS"
