"""The 128-symbol vocabulary: Unicode folded to ASCII, and ASCII text to and from uint8 codes.

Models read one byte per character, so the vocabulary is the 128 ASCII codes. Books are not ASCII: they
use curly quotes, dashes and accented names. Dropping those silently (as earlier research code did) glues
words together and hides how much text was lost, so they are first folded to their nearest ASCII spelling
and only what has no spelling is dropped; both are counted so the data layer can report them.
"""

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

VOCAB_SIZE = 128

# Characters whose ASCII spelling Unicode decomposition does not give (or gives badly). Invisible
# characters (soft hyphen, zero-width space, BOM) fold to nothing: they carry no text.
_FOLDS: dict[str, str] = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\u02bc\u00b4", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2039", "<"),
    **dict.fromkeys("\u203a", ">"),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2212\u2043\ufe63\uff0d", "-"),
    **dict.fromkeys("\u2014\u2015\u2e3a\ufe58", "--"),
    **dict.fromkeys("\u2e3b", "---"),
    "\u2026": "...",
    **dict.fromkeys("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a", " "),
    **dict.fromkeys("\u202f\u205f\u3000", " "),
    **dict.fromkeys("\u00ad\u200b\u200c\u200d\u2060\ufeff", ""),
    "\u2028": "\n",
    "\u2029": "\n\n",
    **dict.fromkeys("\u2022\u2023", "*"),
    "\u00b7": ".",
    "\u00d7": "x",
    "\u00f7": "/",
    "\u2044": "/",
    "\u00df": "ss",
    "\u1e9e": "SS",
    "\u00e6": "ae",
    "\u00c6": "AE",
    "\u0153": "oe",
    "\u0152": "OE",
    "\u00f8": "o",
    "\u00d8": "O",
    "\u0111": "d",
    "\u0110": "D",
    "\u00f0": "d",
    "\u00d0": "D",
    "\u00fe": "th",
    "\u00de": "Th",
    "\u0142": "l",
    "\u0141": "L",
    "\u0131": "i",
}

_NON_ASCII = re.compile(r"[^\x00-\x7f]")


@dataclass
class FoldReport:
    """What `fold_to_ascii` changed: characters folded to an ASCII spelling, and characters dropped.

    Reports add up (`a + b`), so a corpus of several books can report once.
    """

    folded: int
    dropped: int
    dropped_chars: Counter[str]
    folded_chars: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: "FoldReport") -> "FoldReport":
        return FoldReport(
            self.folded + other.folded,
            self.dropped + other.dropped,
            self.dropped_chars + other.dropped_chars,
            self.folded_chars + other.folded_chars,
        )


def _spell(char: str) -> str | None:
    """The ASCII spelling of one non-ASCII character, or None when it has none.

    Compatibility decomposition (NFKD) splits accented letters into base letter plus combining marks and
    spells ligatures and super/subscripts out (fi, 2); the marks are then discarded.
    """
    if char in _FOLDS:
        return _FOLDS[char]
    decomposed = unicodedata.normalize("NFKD", char)
    spelled = "".join(part for part in decomposed if part.isascii())
    return spelled or None


def fold_to_ascii(text: str) -> tuple[str, FoldReport]:
    """Fold `text` to ASCII: curly quotes to straight, dashes to `-`/`--`, accents to base letters.

    Characters with no ASCII spelling are dropped; the report counts every folded and dropped character.
    The work is done once per distinct character, so a whole book folds in one `str.translate` pass.
    """
    if text.isascii():
        return text, FoldReport(0, 0, Counter())
    counts = Counter(_NON_ASCII.findall(text))
    table: dict[int, str] = {}
    folded_chars: Counter[str] = Counter()
    dropped_chars: Counter[str] = Counter()
    for char, count in counts.items():
        spelled = _spell(char)
        table[ord(char)] = spelled or ""
        (folded_chars if spelled is not None else dropped_chars)[char] = count
    report = FoldReport(folded_chars.total(), dropped_chars.total(), dropped_chars, folded_chars)
    return text.translate(table), report


def encode(text: str) -> torch.Tensor:
    """ASCII text as a 1-D uint8 tensor of codes; ValueError if any character is outside ASCII.

    Refusing non-ASCII (instead of folding here) keeps folding in one place, where it is counted.
    """
    if not text.isascii() and (bad := _NON_ASCII.search(text)):
        raise ValueError(
            f"cannot encode {bad.group()!r} at position {bad.start()}: "
            "text must be ASCII (fold it with fold_to_ascii first)"
        )
    if not text:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8)


def decode(codes: torch.Tensor | Sequence[int]) -> str:
    """The text of a 1-D tensor or sequence of codes; ValueError for codes outside 0..127."""
    if isinstance(codes, torch.Tensor):
        return _decode_tensor(codes)
    values = list(codes)
    bad = next((value for value in values if not 0 <= value < VOCAB_SIZE), None)
    if bad is not None:
        raise ValueError(f"code {bad} is outside the {VOCAB_SIZE}-symbol vocabulary")
    return bytes(values).decode("ascii")


def _decode_tensor(codes: torch.Tensor) -> str:
    """Decode without a Python loop over the codes: a book's worth of codes stays fast."""
    if codes.dim() > 1 or codes.dtype.is_floating_point or codes.dtype.is_complex:
        raise ValueError(
            f"decode takes a 1-D integer tensor, got {codes.dtype} of shape {tuple(codes.shape)}"
        )
    flat = codes.detach().cpu().reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= VOCAB_SIZE):
        bad = flat[(flat < 0) | (flat >= VOCAB_SIZE)][0]
        raise ValueError(f"code {int(bad)} is outside the {VOCAB_SIZE}-symbol vocabulary")
    return flat.to(torch.uint8).numpy().tobytes().decode("ascii")
