"""Generated answers against reference replies: exact match, ROUGE-L (`rouge-score`), BLEU and chrF
(`sacrebleu`), each computed by its library, with CJK text tokenized per character so Chinese
answers are scored rather than silently emptied by English-only tokenizers."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation) | {"。", "，", "！", "？", "；", "：", "、", "“", "”", "‘", "’", "（", "）"}


def normalize(text: str) -> str:
    """Lowercase, NFKC, punctuation and English articles removed, whitespace collapsed (SQuAD-style)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def has_cjk(texts: Sequence[str]) -> bool:
    return any(re.search(f"[{_CJK}]", t) for t in texts)


class _WordTokenizer:
    """rouge-score's tokenizer interface: lowercase words, each CJK character a word."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 per answer (rouge-score's LCS implementation)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def bleu_and_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu; its `zh` tokenizer when the references hold CJK text) and chrF."""
    import sacrebleu

    tokenize = "zh" if has_cjk(references) else "13a"
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize)
    chrf = sacrebleu.corpus_chrf(list(predictions), [list(references)])
    return {"bleu": bleu.score, "chrf": chrf.score}


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Means over the answers (exact match and ROUGE-L in [0, 1]; BLEU and chrF in sacrebleu's 0-100)."""
    n = max(len(predictions), 1)
    return {
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
        "rouge_l": sum(rouge_l(predictions, references)) / n,
        **bleu_and_chrf(predictions, references),
    }
