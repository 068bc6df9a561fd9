#!/usr/bin/env python3
"""deployment-text: make untrusted text (a service's answer, a branch name) safe for one place.

The workflow shows text it does not control in three places, each with its own dangers:

  note      a one-line note to store (the verification's evidence): valid UTF-8, no control,
            bidi or other invisible format characters (escaped as \\xNN / \\uNNNN), whitespace
            runs squashed to one space, at most --max characters (default 300).
  markdown  text for $GITHUB_STEP_SUMMARY: a note as above, then HTML-escaped (& < > " ') and
            every other ASCII punctuation character backslash-escaped, so it cannot start a
            heading, a link, an image, a table cell, code or an HTML tag. Renders as the text.
  log       lines for the job log, between `::stop-commands::TOKEN` and `::TOKEN::` (TOKEN
            random), so no `::command::` or `##[command]` in them is acted on; control characters
            are escaped, so terminals do not act on escape sequences either.

Reads the text from the arguments (joined by spaces) or, without arguments, from stdin as bytes.
Standard library only; never fails on any input (exit 0), so a caller's `set -e` is not tripped.

Usage: deployment_text.py note|markdown|log [--max N] [TEXT...]
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from typing import Optional

DEFAULT_MAX = 300
# Bidi controls and other invisible characters that change how text reads.
_FORMAT = {"Cf", "Cc", "Cs", "Co", "Cn", "Zl", "Zp"}
_MARKDOWN_PUNCTUATION = set("!#$%()*+,-./:;=?@[\\]^_`{|}~")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """Valid, visible text: controls and format characters escaped, whitespace squashed."""
    out = []
    for char in text:
        if char == "\n" and keep_newlines:
            out.append(char)
        elif char in "\t\r\n\v\f" or (char.isspace() and unicodedata.category(char) != "Cf"):
            out.append(" ")
        elif unicodedata.category(char) in _FORMAT or char == "\ufffd":
            out.append(_escape_char(char))
        else:
            out.append(char)
    joined = "".join(out)
    if keep_newlines:
        return "\n".join(re.sub(r" {2,}", " ", line).strip() for line in joined.split("\n"))
    return re.sub(r" {2,}", " ", joined).strip()


def decode(data: bytes) -> str:
    """Bytes as text: valid UTF-8 as is, every invalid byte as \\xNN."""
    return data.decode("utf-8", errors="backslashreplace")


def note(text: str, limit: int = DEFAULT_MAX) -> str:
    cleaned = clean(text)
    if len(cleaned) > limit:
        cleaned = cleaned[: max(limit - 1, 0)].rstrip() + "…"
    return cleaned


def markdown(text: str, limit: int = DEFAULT_MAX) -> str:
    out = []
    for char in note(text, limit):
        if char in _HTML:
            out.append(_HTML[char])
        elif char in _MARKDOWN_PUNCTUATION:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def log(text: str, token: Optional[str] = None) -> str:
    token = token or os.urandom(16).hex()
    body = clean(text, keep_newlines=True)
    # The token cannot occur in the text: the text could otherwise end the fence itself.
    while token in body:
        token = os.urandom(16).hex()
    return f"::stop-commands::{token}\n{body}\n::{token}::\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    mode = args.pop(0) if args else ""
    limit = DEFAULT_MAX
    if args[:1] == ["--max"] and len(args) >= 2 and args[1].isdigit():
        limit = int(args[1])
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if mode not in {"note", "markdown", "log"}:
        sys.stderr.write("usage: deployment-text note|markdown|log [--max N] [TEXT...]\n")
        return 2
    try:
        if args:
            # Arguments arrive already decoded by Python (surrogateescape for invalid bytes).
            text = decode(" ".join(args).encode("utf-8", errors="surrogateescape"))
        else:
            text = decode(sys.stdin.buffer.read(4 * 1024 * 1024))
    except (OSError, ValueError):
        text = ""
    if mode == "note":
        result = note(text, limit) + "\n"
    elif mode == "markdown":
        result = markdown(text, limit) + "\n"
    else:
        result = log(text)
    sys.stdout.buffer.write(result.encode("utf-8", errors="backslashreplace"))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
