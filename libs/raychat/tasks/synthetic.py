"""Tasks generated in code: letter counting (SpellingBee), spelling (SimpleSpelling), small sums
(SimpleArithmetic) and identity conversations (Identity).

Every example is a pure function of (seed, split, index): `seeded_rng` makes example i identical on every rank,
epoch and run, and the test split uses a disjoint seed range, so "size" is just how many examples to expose.

Why these exist: a small model sees each word as a few opaque tokens, so "how many r in strawberry" is hard unless
it is taught to spell the word out and to double check with the calculator tool (`'strawberry'.count('r')`).
SimpleArithmetic is the smallest verifiable task: a tiny model can learn single-digit sums on CPU in minutes,
which makes it the RL smoke test. Identity teaches the model its name, raychat, and what it is.
"""

from __future__ import annotations

import string

from raychat.common import RaychatError
from raychat.tasks.common import Task, extract_answer, last_text, same_number, seeded_rng

_TEST_SEED_OFFSET = 10_000_000    # test examples come from seeds no train example uses
_WORDS: dict[str, tuple[str, ...]] = {}


def load_words() -> tuple[str, ...]:
    """The spelling tasks' word list: nanochat's (dwyl/english-words, 370K words) once `raychat data download words`
    has fetched it, else the list shipped in raychat/tasks/words.txt: the 5008 most frequent lowercase words
    (3-14 letters) of the shared Wikipedia shards 0-4 plus a few classic letter-counting words (strawberry,
    mississippi, bookkeeper, ...), so the CPU presets need no download. Lowercase a-z words only."""
    from raychat.data.registry import resolve

    path = resolve("words")
    key = str(path)
    if key not in _WORDS:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RaychatError(f"cannot read the word list {path}: {e}") from None
        words = tuple(w for w in text.split() if w.isascii() and w.isalpha() and w.islower())
        if not words:
            raise RaychatError(f"the word list {path} holds no lowercase words")
        _WORDS[key] = words
    return _WORDS[key]


_COUNT_TEMPLATES = (
    "How many {letter} are in the word {word}", "How many {letter} are in {word}",
    "Count the number of {letter} in {word}", "How many times does {letter} appear in {word}",
    "What's the count of {letter} in {word}", "In the word {word}, how many {letter} are there",
    "How many letter {letter} are in the word {word}", "Tell me the number of {letter} in {word}",
    "How many occurrences of {letter} are in {word}", "How many {letter}s are in {word}",
    "How many {letter} does {word} have", "{word} has how many {letter}", "Count the {letter} in {word}",
    "Combien de {letter} dans {word}", "Wie viele {letter} sind in {word}", "¿Cuántas {letter} hay en {word}",
)


class _Synthetic(Task):
    eval_type = "generative"

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise RaychatError(f"{type(self).__name__} split must be train or test, got {split!r}")
        if size < 0:
            raise RaychatError(f"{type(self).__name__} size must be >= 0, got {size}")
        self.size, self.split, self.seed = size, split, seed

    def num_examples(self) -> int:
        return self.size

    def _rng(self, index: int):
        return seeded_rng(self.seed, index + (_TEST_SEED_OFFSET if self.split == "test" else 0))

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return same_number(extract_answer(completion), extract_answer(last_text(conversation)))


class SpellingBee(_Synthetic):
    """'How many r are in strawberry?' -> spell it out, count by hand, check with the calculator, `#### 3`."""

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 0, words=None, **kwargs):
        super().__init__(size, split, seed, **kwargs)
        self.words = tuple(words) if words is not None else load_words()

    def get_example(self, index: int) -> dict:
        rng = self._rng(index)
        word = rng.choice(self.words)
        # mostly a letter of the word; sometimes any letter, so "0" is a possible answer
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
        count = word.count(letter)
        template = rng.choice(_COUNT_TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()
        lq, wq = rng.choice(("", "'", '"')), rng.choice(("", "'", '"'))
        user = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}") + ("?" if rng.random() < 0.5 else "")
        # position:letter with no space in between: " a" and "a" are different tokens
        lines, running = [], 0
        for i, ch in enumerate(word, 1):
            if ch == letter:
                running += 1
                lines.append(f"{i}:{ch} hit! count={running}")
            else:
                lines.append(f"{i}:{ch}")
        manual = (f"We are asked to find the number '{letter}' in the word '{word}'. Let me try a manual approach "
                  f"first.\n\nFirst spell the word out:\n{word}:{','.join(word)}\n\nThen count the occurrences of "
                  f"'{letter}':\n" + "\n".join(lines) + f"\n\nThis gives us {running}.")
        parts = [{"type": "text", "text": manual},
                 {"type": "text", "text": "\n\nLet me double check this using Python:\n\n"},
                 {"type": "python", "text": f"'{word}'.count('{letter}')"},
                 {"type": "python_output", "text": str(count)},
                 {"type": "text", "text": f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"}]
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": parts}]}


class SimpleSpelling(_Synthetic):
    """'Spell the word: apple' -> 'apple:a,p,p,l,e' (the hard half of SpellingBee, condensed)."""

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 1, words=None, **kwargs):
        super().__init__(size, split, seed, **kwargs)
        self.words = tuple(words) if words is not None else load_words()

    def get_example(self, index: int) -> dict:
        word = self._rng(index).choice(self.words)
        return {"messages": [{"role": "user", "content": f"Spell the word: {word}"},
                             {"role": "assistant", "content": f"{word}:{','.join(word)}"}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]


class SimpleArithmetic(_Synthetic):
    """'What is 3 + 5?' -> `#### 8` (or, with use_tool, a calculator call first). Operands in [0, max_operand]."""

    _TEMPLATES = ("What is {a} {op} {b}?", "{a} {op} {b} = ?", "Compute {a} {op} {b}.", "what's {a}{op}{b}")

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 2, max_operand: int = 9,
                 ops: tuple[str, ...] = ("+",), use_tool: bool = False, **kwargs):
        super().__init__(size, split, seed, **kwargs)
        if max_operand < 1 or not ops or any(op not in "+-*" for op in ops):
            raise RaychatError(f"SimpleArithmetic needs max_operand >= 1 and ops from + - *, got {max_operand}, {ops}")
        self.max_operand, self.ops, self.use_tool = max_operand, tuple(ops), use_tool

    def get_example(self, index: int) -> dict:
        rng = self._rng(index)
        a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
        op = rng.choice(self.ops)
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        user = rng.choice(self._TEMPLATES).format(a=a, op=op, b=b)
        if self.use_tool:
            content = [{"type": "python", "text": f"{a}{op}{b}"}, {"type": "python_output", "text": str(result)},
                       {"type": "text", "text": f"\n\n#### {result}"}]
        else:
            content = [{"type": "text", "text": f"#### {result}"}]
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": content}]}


_NAME_QUESTIONS = ("What's your name?", "What is your name?", "Who are you?", "What should I call you?",
                   "Introduce yourself.", "hi, who am I talking to?", "Are you ChatGPT?", "Are you Claude?",
                   "what are you", "Tell me about yourself.", "Do you have a name?", "Hello! Who is this?")
_NAME_ANSWERS = (
    "I'm raychat, a small chat model. I was trained from scratch with the raychat project: a tokenizer, "
    "pretraining on web text, chat fine-tuning and a bit of reinforcement learning.",
    "My name is raychat. I'm a small language model trained end to end with the open-source raychat project.",
    "I'm raychat! I'm a compact chat assistant, trained following the nanochat recipe, with training on Ray "
    "Train and serving on Ray Serve.",
    "You're talking to raychat, a small open-source chat model. I'm not ChatGPT or any other big assistant, "
    "just a model a few hundred million parameters in size or less.",
)
_FOLLOW_UPS = (
    ("Who made you?", "I was built with raychat, an open-source project that trains a GPT-2-grade chat model end "
                      "to end. It follows Andrej Karpathy's nanochat recipe and runs on Ray."),
    ("What can you do?", "I can chat, answer simple questions, do arithmetic with a calculator tool and count "
                         "letters in words. I'm small, so I make mistakes, especially with facts."),
    ("Can you use tools?", "Yes, a calculator: I write an expression such as 48/2 and the result comes back to "
                           "me, which helps with math and with counting letters."),
    ("Are you always right?", "No. I'm a small model and I can be confidently wrong, so please double check "
                              "anything important."),
    ("What language do you speak?", "Mostly English; I was trained mainly on English text."),
)


class Identity(_Synthetic):
    """One or two exchanges about who the assistant is (name raychat, what it is, what it can do)."""

    eval_type = None

    evaluate = Task.evaluate       # training data only: no checker

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 3, **kwargs):
        super().__init__(size, split, seed, **kwargs)

    def get_example(self, index: int) -> dict:
        rng = self._rng(index)
        q = rng.choice(_NAME_QUESTIONS)
        messages = [{"role": "user", "content": q.lower() if rng.random() < 0.2 else q},
                    {"role": "assistant", "content": rng.choice(_NAME_ANSWERS)}]
        if rng.random() < 0.5:
            fq, fa = rng.choice(_FOLLOW_UPS)
            messages += [{"role": "user", "content": fq}, {"role": "assistant", "content": fa}]
        return {"messages": messages}
