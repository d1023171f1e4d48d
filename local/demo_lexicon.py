"""Word lists and a small grammar for the demo corpora's sentences.

The same generator writes the read sentences of the LibriSpeech-layout corpus and the dialog
turns of the IEMOCAP-layout corpus, so adapting the ASR to the emotion corpus is a change of
speaking style, not of vocabulary. Nothing here depends on the emotion of a turn.
"""

from __future__ import annotations

import numpy as np

NOUNS = """
apple arm army aunt baby back bag ball band bank barn basket bath beach bear bed bell belt bench
bird boat body bone book boot bottle bowl box boy bread brick bridge brother brush bucket cake
camera camp candle car card carpet cart castle cat chain chair cheese child church circle city
class clock cloud coat coffee coin corner cottage country cousin cow cup curtain desk dinner
doctor dog doll door dream dress drum duck dust ear earth egg engine evening eye face farm
father feather fence field finger fire fish flag floor flower fog foot forest fork fox friend
frog garden gate girl glass glove goat gold grass guitar hair hall hammer hand harbor hat head
heart hill hole home honey horse hospital hotel house ice island jacket jar judge kettle key
king kitchen kite knee knife ladder lake lamp lawyer leaf letter library light lion lunch
machine map market meadow meal milk mirror money monkey moon morning mother mountain mouse
mouth music nail neck needle nest night nose note ocean office oven owner paint paper park
party path pen pencil piano picture pie pig pillow pipe plane plant plate pocket pond pot
queen rabbit radio rain river road rock roof room rope rose sail salt sand school sea seat
sheep shelf ship shirt shoe shop shoulder sister sky sleep snake snow sock soldier song soup
spoon spring square stair star station stone storm story street string sugar summer sun
table tail teacher tent thread ticket tiger toe tongue tooth towel tower town toy train tree
truck uncle valley village voice wagon wall watch water wave week wheel window wing winter
wire wolf woman wood wool world worm yard year
""".split()

VERBS_PAST = """
asked baked borrowed bought brought built burned called carried caught changed chased cleaned
climbed closed cooked copied counted covered crossed danced dropped dried earned emptied
painted filled fixed folded followed found gathered grabbed guarded hid held helped hugged
hunted joined kept kicked kissed knocked lifted liked locked lost loved mended missed moved
noticed opened ordered packed passed picked planted played pulled pushed raised reached read
remembered repaired saved sold sent showed signed stole stopped studied taught tied
touched traded visited walked warmed washed watched wanted wrapped wrote
""".split()

VERBS_BASE = """
ask bake borrow buy bring build call carry catch change chase clean climb close cook count
cover cross dance drop find fix fold follow hold help hide keep kick lift like lock lose love
mend miss move open order pack pass pick plant play pull push reach remember repair save sell
send show sign stop study teach tie touch trade visit walk wash watch want wrap write forget
""".split()

ADJECTIVES = """
angry big bitter black blue bold brave bright broken brown busy calm careful cheap clean
clever cold cool curious dark dear deep dirty dry dull eager early easy empty fair famous fast
fine flat foolish fresh friendly full funny gentle giant glad golden good grand gray great
green happy hard heavy high hollow honest hot huge hungry kind large late lazy little lonely
long loud lovely lucky narrow neat new nice noisy old open orange pale perfect pink plain
polite poor pretty proud purple quick quiet rare red rich round rough rude sad safe sharp shiny
short shy silent silver simple slow small smart smooth soft sour special square steep sticky
strange strong sweet tall tiny tired warm weak wet white wide wild wise wooden yellow young
""".split()

ADVERBS = """
again almost already always carefully certainly clearly early easily finally gently happily
here honestly loudly maybe never now often only perhaps quickly quietly rarely really slowly
sometimes soon still suddenly there today together tomorrow tonight truly usually yesterday
""".split()

NAMES = """
anna ben carl david emma frank grace henry jack kate laura mark nora oliver paul rose sam
thomas victor william
""".split()

PREPOSITIONS = "above across after along around at before behind below beside by from in inside into near on over past through to toward under with without".split()

# Conversational frames for dialog turns: {n} noun, {a} adjective, {v} base verb, {p} past verb,
# {d} adverb, {N} name, {r} preposition.
DIALOG_FRAMES = [
    "i {p} the {n} {d}",
    "did you {v} the {a} {n}",
    "where is my {n}",
    "we should {v} the {n} {d}",
    "you never {v} anything",
    "i can not believe you {p} my {n}",
    "that is a {a} {n}",
    "why did {N} {v} the {n}",
    "well i think the {n} is {a}",
    "it was {a} {d}",
    "tell me about the {n}",
    "you {p} it {r} the {n}",
    "i want to {v} the {a} {n} {d}",
    "what about the {n} {r} the {n}",
    "no the {n} was {a}",
    "yes i {p} the {n} for you",
    "okay let us {v} the {n}",
    "do not {v} my {n}",
    "are you sure the {n} is {a}",
    "oh {N} {p} a {a} {n}",
    "i just want to go home",
    "how could you {v} the {n}",
    "it is {d} too {a}",
    "we have to {v} it {d}",
]

# Read-speech frames for the LibriSpeech-layout corpus: short narrative sentences (5-8 words), so
# that a CPU sees many utterances per minute of training.
READ_FRAMES = [
    "the {a} {n} {p} the {n}",
    "{N} {p} a {a} {n}",
    "{d} the {n} {p} the {n}",
    "there was a {a} {n} {r} the {n}",
    "the {n} was {a} and {a}",
    "{N} and {N} {p} the {n}",
    "it was a {a} {n}",
    "{r} the {n} the {n} {p}",
    "she {p} the {a} {n} {d}",
    "they {p} {r} the {a} {n}",
    "he {p} that the {n} was {a}",
    "the {a} {n} {p} {d}",
]

FUNCTION_WORDS = set(
    "a about all and anything are at be could did do for go has have he home how i is it just let "
    "me my no not of oh okay she should sure that the there they think to too us want was we well "
    "what where while why yes you".split()
)


def vocabulary() -> list[str]:
    """All words the generator can produce, sorted."""
    words = set(NOUNS + VERBS_PAST + VERBS_BASE + ADJECTIVES + ADVERBS + NAMES + PREPOSITIONS) | FUNCTION_WORDS
    for frame in DIALOG_FRAMES + READ_FRAMES:
        words.update(w for w in frame.split() if not w.startswith("{"))
    return sorted(words)


def _fill(frame: str, rng: np.random.Generator) -> str:
    pools = {"n": NOUNS, "a": ADJECTIVES, "v": VERBS_BASE, "p": VERBS_PAST, "d": ADVERBS, "N": NAMES, "r": PREPOSITIONS}
    out = []
    for token in frame.split():
        if token.startswith("{") and token.endswith("}"):
            pool = pools[token[1:-1]]
            out.append(pool[int(rng.integers(len(pool)))])
        else:
            out.append(token)
    return " ".join(out)


def read_sentence(rng: np.random.Generator, clauses: int = 1) -> str:
    """A narrative sentence of ``clauses`` frames joined by 'and'."""
    parts = [_fill(READ_FRAMES[int(rng.integers(len(READ_FRAMES)))], rng) for _ in range(clauses)]
    return " and ".join(parts)


def dialog_sentence(rng: np.random.Generator) -> str:
    """A conversational turn of one or two frames."""
    n = 1 if rng.random() < 0.7 else 2
    return " ".join(_fill(DIALOG_FRAMES[int(rng.integers(len(DIALOG_FRAMES)))], rng) for _ in range(n))
