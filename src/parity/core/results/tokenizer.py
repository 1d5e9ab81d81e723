"""What a tokenizer comparison found: per text, the runs of ids the two tokenizers cut differently, each
with its pattern named (core/tokenization.py aligns and names them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenDifference:
    reference_start: int                      # position in the reference's ids
    reference: tuple[tuple[int, str], ...]    # (id, text) of the reference's run
    candidate_start: int
    candidate: tuple[tuple[int, str], ...]
    pattern: str

    def __repr__(self) -> str:
        return f"<TokenDifference {self.pattern} at {self.reference_start}>"


@dataclass(frozen=True)
class TextTokens:
    """One text's comparison."""

    name: str
    text: str
    reference_ids: tuple[int, ...]
    candidate_ids: tuple[int, ...]
    differences: tuple[TokenDifference, ...] = ()

    def __bool__(self) -> bool:
        return not self.differences

    def __repr__(self) -> str:
        return f"<TextTokens {self.name}: {len(self.differences)} differences>"


@dataclass(frozen=True)
class TokenizerComparison:
    texts: tuple[TextTokens, ...]
    reference: str
    candidate: str
    notes: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return all(self.texts)

    def __repr__(self) -> str:
        return f"<TokenizerComparison {sum(map(bool, self.texts))}/{len(self.texts)} texts agree>"

    @property
    def patterns(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for text in self.texts:
            for difference in text.differences:
                counts[difference.pattern] = counts.get(difference.pattern, 0) + 1
        return counts
