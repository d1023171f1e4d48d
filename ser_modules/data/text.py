"""Transcript normalisation shared by every corpus preparer and the character vocabularies.

ASR targets are upper-case letters, apostrophe and space (LibriSpeech's convention). Corpus
annotations such as ``[LAUGHTER]``, ``{NOISE}`` or ``<unk>`` are not spoken words and are removed
before ASR (Yeh 2020, section 3.1.1). Letters outside A-Z are transliterated, not dropped: German
umlauts and sharp s as German writes them without the letters (``Tüten`` -> ``TUETEN``, ``Stück``
-> ``STUECK``, ``groß`` -> ``GROSS``), other accented letters without their accent (``café`` ->
``CAFE``), so that a non-English corpus (EmoDB) keeps every word's letters.
"""

from __future__ import annotations

import re
import unicodedata

# IEMOCAP [LAUGHTER] [BREATHING] [GARBAGE], TED-LIUM {NOISE} {BREATH} <unk> <sil>, VoxForge <s>.
_SPECIAL_TOKEN = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
_NOT_CHAR = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r" +")
# Upper-case umlauts written out (German convention); "ß".upper() is already "SS". A typographic
# apostrophe is the ASCII one.
_SPELLED_OUT = str.maketrans({"Ä": "AE", "Ö": "OE", "Ü": "UE", "ẞ": "SS", "\u2019": "'"})


def remove_special_tokens(text: str) -> str:
    """Drop bracketed annotation tokens and squeeze spaces; keeps the words as written."""
    return _SPACES.sub(" ", _SPECIAL_TOKEN.sub(" ", text)).strip()


def transliterate(text: str) -> str:
    """Upper-case ``text`` with umlauts and sharp s written out and other letters' accents removed."""
    text = unicodedata.normalize("NFC", text).upper().translate(_SPELLED_OUT)  # NFC: "A" + diaeresis is "Ä"
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize_transcript(text: str) -> str:
    """Upper-case, special tokens removed, letters transliterated (:func:`transliterate`), only
    ``A-Z``, apostrophe and single spaces left.

    Hyphens and punctuation become word breaks or vanish: ``"Well--I don't know."`` ->
    ``"WELL I DON'T KNOW"``; ``"Was sind denn das für Tüten?"`` -> ``"WAS SIND DENN DAS FUER TUETEN"``.
    """
    text = transliterate(remove_special_tokens(text))
    text = re.sub(r"[-_/]", " ", text)
    text = _NOT_CHAR.sub("", text)
    # Apostrophes that do not sit inside a word are quotes, not contractions.
    text = re.sub(r"(?<![A-Z])'|'(?![A-Z])", "", text)
    return _SPACES.sub(" ", text).strip()


CHARACTERS = list("'ABCDEFGHIJKLMNOPQRSTUVWXYZ ")


class CharVocabulary:
    """Fixed character inventory with optional special symbols placed first.

    ``CharVocabulary(specials=["<blank>"])`` is the 29-symbol CTC inventory of Lakomkin 2018
    (blank, apostrophe, A-Z, space); ``CharVocabulary(specials=["<pad>", "<sos>", "<eos>"])``
    the LAS inventory (Yeh 2020 uses ``<PAD> <SOS> <EOS> <SPACE> A-Z``; the apostrophe is added).
    """

    def __init__(self, specials: list[str] | tuple[str, ...] = ("<blank>",), characters: list[str] | None = None):
        self.specials = list(specials)
        self.characters = list(CHARACTERS if characters is None else characters)
        self.symbols = self.specials + self.characters
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def id_of(self, symbol: str) -> int:
        return self.index[symbol]

    def encode(self, text: str) -> list[int]:
        """Map a normalised transcript to ids; raises ``ValueError`` naming an unknown character."""
        try:
            return [self.index[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} of {text!r} is not in the vocabulary") from err

    def decode(self, ids) -> str:
        """Map ids back to text, skipping special symbols."""
        n = len(self.specials)
        return "".join(self.symbols[i] for i in ids if int(i) >= n)
