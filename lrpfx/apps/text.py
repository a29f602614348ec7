"""Token relevance rendered as red/blue highlighting: HTML and terminal (ANSI colours)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch
from torch import Tensor


def _scaled(relevance: Tensor | Sequence[float]) -> list[float]:
    r = torch.as_tensor(relevance, dtype=torch.float64).flatten()
    peak = float(r.abs().max()) if r.numel() else 0.0
    return [float(v) / peak if peak > 0 else 0.0 for v in r]


def _rgb(v: float) -> tuple[int, int, int]:
    """Diverging colour centred at white: red for positive, blue for negative, in [-1, 1]."""
    t = min(abs(v), 1.0)
    fade = round(255 * (1 - t))
    return (255, fade, fade) if v >= 0 else (fade, fade, 255)


def _check(tokens: Sequence[str], scores: list[float]) -> None:
    if len(tokens) != len(scores):
        raise ValueError(f"{len(tokens)} tokens but {len(scores)} relevance values")


def render_html(tokens: Sequence[str], relevance: Tensor | Sequence[float],
                title: str | None = None) -> str:
    """An HTML fragment: each token on a background from blue (against) to red (for).

    Parameters
    ----------
    tokens
        Token strings (e.g. ``tokenizer.convert_ids_to_tokens(ids)``).
    relevance
        One value per token (e.g. a row of ``explainer.explain(input_ids=...)``); scaled so
        the largest magnitude is full colour.
    title
        Optional heading.
    """
    scores = _scaled(relevance)
    _check(tokens, scores)
    spans = []
    for tok, v in zip(tokens, scores):
        r, g, b = _rgb(v)
        spans.append(
            f'<span title="{v:+.3f}" style="background-color: rgb({r},{g},{b}); '
            f'padding: 1px 2px; margin: 1px; border-radius: 3px">{html.escape(tok)}</span>')
    head = f"<h3>{html.escape(title)}</h3>\n" if title else ""
    return f'{head}<p style="font-family: monospace; line-height: 1.8">{" ".join(spans)}</p>\n'


def render_terminal(tokens: Sequence[str], relevance: Tensor | Sequence[float]) -> str:
    """The same highlighting with 24-bit ANSI background colours, for a terminal."""
    scores = _scaled(relevance)
    _check(tokens, scores)
    out = []
    for tok, v in zip(tokens, scores):
        r, g, b = _rgb(v)
        out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{tok}\x1b[0m")
    return " ".join(out)
