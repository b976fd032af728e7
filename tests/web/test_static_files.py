"""The page's files, without a browser: vendored libraries match their checksums, and neither the HTML nor
our own scripts hold anything a strict CSP would refuse or a path to unsanitised HTML."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from gateway.web import CONTENT_TYPES, STATIC, static_files

VENDOR = STATIC / "vendor"
OWN_SCRIPTS = sorted(p for p in STATIC.glob("*.js"))


def test_vendored_files_match_their_checksums() -> None:
    lines = (VENDOR / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    assert {"marked/marked.esm.js", "marked/LICENSE", "dompurify/purify.es.mjs", "dompurify/LICENSE"} <= set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_vendored_versions_are_the_pinned_ones() -> None:
    script = (VENDOR / "revendor.sh").read_text()
    pinned = dict(re.findall(r"^(MARKED|DOMPURIFY)_VERSION=(\S+)$", script, re.M))
    versions = dict(line.split() for line in (VENDOR / "VERSIONS").read_text().splitlines())
    assert versions == {"marked": pinned["MARKED"], "dompurify": pinned["DOMPURIFY"]}
    assert f"DOMPurify {pinned['DOMPURIFY']}" in (VENDOR / "dompurify" / "purify.es.mjs").read_text()[:200]


def test_the_html_has_no_inline_script_style_or_handlers() -> None:
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts, "the page loads its module"
    assert all('src="/static/' in attrs and body.strip() == "" for attrs, body in scripts)
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert "http://" not in html and "https://" not in html  # nothing from another origin


@pytest.mark.parametrize("script", OWN_SCRIPTS, ids=lambda p: p.name)
def test_our_scripts_never_write_html_or_eval(script: Path) -> None:
    code = script.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute(\"style\"", ".style.", "localStorage.setItem(\"vlq.api", "?api_key", "&api_key"):
        assert sink not in code, f"{script.name} uses {sink}"


def test_the_api_key_lives_in_session_storage_only() -> None:
    state = (STATIC / "state.js").read_text()
    key_lines = [line for line in state.splitlines() if "API_KEY" in line and "Storage" in line]
    assert key_lines and all("sessionStorage" in line for line in key_lines)


def test_only_files_of_known_types_are_servable() -> None:
    served = static_files()
    assert "index.html" in served and "main.js" in served and "vendor/dompurify/purify.es.mjs" in served
    assert all(Path(name).suffix in CONTENT_TYPES for name in served)
    assert "vendor/revendor.sh" not in served and "vendor/SHA256SUMS" not in served
    assert not any(name.endswith("LICENSE") for name in served)
