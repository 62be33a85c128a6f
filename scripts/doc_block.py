"""Replace the generated block of a Markdown document, keeping the prose around it.

Shared by the scripts that write measured tables into docs/ (attack_table.py,
hybrid_attack.py): the block sits between two HTML-comment markers.
"""

from __future__ import annotations

from pathlib import Path


def write_generated_block(path: str | Path, generated: str, begin: str, end: str, title: str) -> None:
    """Put ``generated`` between ``begin`` and ``end`` in ``path``; a missing file starts as
    ``# title`` with empty markers, a file without markers gets them appended."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"# {title}\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{generated}{end}{tail}")
