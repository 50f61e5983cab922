"""Splitting a document for ingestion: on its own structure first
(headings, paragraphs, then sentences), packed into chunks of about
``size`` characters with ``overlap`` characters of the previous chunk's end
repeated, so a fact that straddles a boundary is whole in one chunk. Pure."""

from __future__ import annotations

import re

_HEADING = re.compile(r"(?m)^(?=#{1,6}\s)|\n{2,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _pieces(text: str, size: int) -> list[str]:
    out: list[str] = []
    for block in _HEADING.split(text):
        block = block.strip()
        if not block:
            continue
        if len(block) <= size:
            out.append(block)
            continue
        for sentence in _SENTENCE.split(block):
            while len(sentence) > size:  # one enormous sentence: hard split
                out.append(sentence[:size])
                sentence = sentence[size:]
            if sentence.strip():
                out.append(sentence.strip())
    return out


def chunk(text: str, size: int = 800, overlap: int = 120) -> list[str]:
    if size < 50 or not 0 <= overlap < size // 2:
        raise ValueError("chunk size must be >= 50 and overlap in [0, size/2)")
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, size - overlap):
        if current and (piece.startswith("#") or len(current) + 1 + len(piece) > size):
            # a heading starts a chunk: a section's facts stay with their title
            chunks.append(current)
            tail = current[-overlap:] if overlap and not piece.startswith("#") else ""
            cut = tail.find(" ")
            current = (tail[cut + 1:] if cut >= 0 else tail).strip()
        current = f"{current}\n{piece}" if current else piece
    if current.strip():
        chunks.append(current)
    return chunks
