"""The semantic cache's guard: which prompts that embed close may share an answer.

The examples are written here, not taken from bench/data/semantic_cache_pairs.jsonl (which
the guard was tuned on): they show the behaviour, they do not repeat the data.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from inference.cache_guard import MAX_CHARS, compatible, conflicts

PAIRS = Path(__file__).resolve().parents[3] / "bench" / "data" / "semantic_cache_pairs.jsonl"

PARAPHRASES = [
    ("How do I make a cup of tea?", "how to make a cup of tea"),
    ("What is the capital of Peru?", "What's Peru's capital city?"),
    ("Recommend a good book on stoicism", "Can you suggest a good book about stoicism?"),
    ("How can I learn JS fast?", "How can I learn JavaScript quickly?"),
    ("What is 12 times 8?", "What is twelve times eight?"),
    ("Show 15% of 200", "Show 15 percent of 200"),
    ("What is the 3rd largest lake?", "What is the third largest lake?"),
    ("Hw do I instal numpy on windos?", "How do I install numpy on Windows?"),
    ("Explain photosynthesis simply", "Can you explain photosynthesis in simple terms?"),
    ("What's a good ML course?", "What is a good machine learning course?"),
    ("Translate 'good morning' into Italian", "How do you say 'good morning' in Italian?"),
    ("Compare cats and dogs as pets", "Compare dogs and cats as pets"),
    ("Why do leaves change colour?", "What's the reason leaves change color?"),
    ("Who is older, Alice or Bob?", "Who is older, Bob or Alice?"),
    ("Difference between a lake and a pond", "How does a pond differ from a lake?"),
]


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
def test_paraphrases_pass(a: str, b: str) -> None:
    assert conflicts(a, b) == []
    assert compatible(a, b)
    assert compatible(b, a)


def test_the_same_prompt_passes() -> None:
    text = "Is it safe to disable Windows Defender?"
    assert compatible(text, text)


REFUSED = [
    # numbers, however written
    ("numbers", "Book a table for 4 at 7 pm", "Book a table for 4 at 7 am"),
    ("numbers", "What was the inflation rate in 2021?", "What was the inflation rate in 2022?"),
    ("numbers", "Make a 3-week study plan", "Make a four-week study plan"),
    ("numbers", "What is 2.5% of 800?", "What is 25% of 800?"),
    ("numbers", "Find the 5th prime number", "Find the 50th prime number"),
    ("numbers", "Is 1,000 grams a kilo?", "Is 100 grams a kilo?"),
    # negation
    ("negation", "List fruits that contain vitamin C", "List fruits that don't contain vitamin C"),
    ("negation", "Which metals rust?", "Which metals never rust?"),
    ("negation", "Recipes with gluten", "Recipes without gluten"),
    ("negation", "Which plants are poisonous to dogs?", "Which plants are non-poisonous to dogs?"),
    # names and code-like tokens
    ("entities", "How do I deploy to Heroku?", "How do I deploy to Vercel?"),
    ("entities", "What does MAX_RETRIES do?", "What does MAX_TIMEOUT do?"),
    ("entities", "Explain the gpt-4o pricing", "Explain the gpt-5 pricing"),
    ("entities", "Is C# faster than C++ for games?", "Is C faster than C++ for games?"),
    # the quoted payload
    ("quotes", "Translate 'good morning' into Italian", "Translate 'good night' into Italian"),
    ("quotes", 'Fix the grammar: "me and him goes"', 'Fix the grammar: "him and me goes"'),
    # who does what to whom
    ("order", "Copy files from the server to my laptop", "Copy files from my laptop to the server"),
    ("order", "Is a kilogram heavier than a pound?", "Is a pound heavier than a kilogram?"),
    ("order", "Why do owls hunt mice?", "Why do mice hunt owls?"),
    ("order", "Why does the moon orbit the earth?", "Why does the earth orbit the moon?"),
    ("order", "What is 9 minus 4?", "What is 4 minus 9?"),
    # opposites, listed or by prefix
    ("opposites", "What are the strengths of Rust?", "What are the weaknesses of Rust?"),
    ("opposites", "How do I lock my screen?", "How do I unlock my screen?"),
    ("opposites", "Is this mushroom edible?", "Is this mushroom inedible?"),
    ("opposites", "How do I compress a folder?", "How do I decompress a folder?"),
    ("opposites", "How do I import a CSV in Excel?", "How do I export a CSV in Excel?"),
    ("opposites", "Sort names in ascending order", "Sort names in descending order"),
    ("opposites", "Is coffee good for you?", "Is coffee bad for you?"),
    ("opposites", "How do I turn on Bluetooth?", "How do I turn off Bluetooth?"),
    # a different question about the same thing
    ("question", "Who painted the Mona Lisa?", "When was the Mona Lisa painted?"),
    ("question", "Where was Einstein born?", "Why was Einstein famous?"),
    ("question", "Explain how to bake bread", "Explain why bread rises"),
    # how much is asked for
    ("scope", "Summarise only the introduction", "Summarise the whole report"),
    ("scope", "Give me a brief overview of Kafka", "Give me a detailed overview of Kafka"),
    # the same frame with one part replaced
    ("slot", "What is the boiling point of water?", "What is the freezing point of water?"),
    ("slot", "Explain the rules of rugby", "Explain the rules of hockey"),
    (
        "slot",
        "What is the time complexity of heapsort?",
        "What is the space complexity of heapsort?",
    ),
]


@pytest.mark.parametrize(("check", "a", "b"), REFUSED)
def test_near_misses_are_refused_by_their_check(check: str, a: str, b: str) -> None:
    assert check in conflicts(a, b)
    assert not compatible(a, b)
    assert not compatible(b, a)


def test_past_what_it_reads_the_prompts_must_be_the_same() -> None:
    document = "Review this contract. " + "The tenant pays rent monthly. " * 300
    assert len(document) > MAX_CHARS
    assert compatible(document + "Sign it.", document + "Sign it.")
    assert not compatible(document + "Is it fair?", document + "Is it legal?")
    assert conflicts(document + "Is it fair?", document + "Is it legal?") == ["beyond"]


def test_huge_prompts_are_read_only_up_to_the_bound() -> None:
    a = "word " * 200_000
    assert compatible(a + "same", a + "same")
    assert not compatible(a + "one", a + "two")


def test_the_labelled_pairs_parse() -> None:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 300
    labels = Counter(row["label"] for row in rows)
    assert set(labels) == {"hit", "miss"}
    assert min(labels.values()) >= 100
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert row["a"].strip()
        assert row["b"].strip()
        assert row["a"] != row["b"]
        assert (row["kind"] == "paraphrase") == (row["label"] == "hit")
