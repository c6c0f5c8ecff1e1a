"""Generation metrics against hand-worked values and the libraries called directly."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llmft.evaluation.text_metrics import bleu_and_chrf, exact_match, generation_metrics, normalize, rouge_l


def test_exact_match_normalizes_case_punctuation_articles_and_spaces():
    assert normalize("  The Capital is PARIS! ") == "capital is paris"
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("Paris", "London") == 0.0
    assert exact_match("巴黎。", "巴黎") == 1.0  # full-width punctuation too


def test_rouge_l_by_hand_and_against_rouge_score():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = "the cat on the mat": 5 of 6 tokens each side
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == [pytest.approx(5 / 6)]
    prediction, reference = "A quick brown fox jumped.", "The quick brown fox jumps over the dog"
    library = rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l([prediction], [reference]) == [pytest.approx(library)]


def test_rouge_l_scores_chinese_per_character():
    # rouge-score's own tokenizer keeps only [a-z0-9]: Chinese would score 0 whatever the answer
    assert rouge_scorer.RougeScorer(["rougeL"]).score("北京是首都", "北京是中国的首都")["rougeL"].fmeasure == 0.0
    # 5 reference characters, 8 predicted, LCS 北京是首都 = 5: P 5/8, R 1, F 2PR/(P+R) = 10/13
    assert rouge_l(["北京是中国的首都"], ["北京是首都"]) == [pytest.approx(10 / 13)]


def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    predictions = ["the cat sat on the mat", "a dog barked loudly at night"]
    references = ["the cat is on the mat", "the dog barked at night"]
    ours = bleu_and_chrf(predictions, references)
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert ours["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert bleu_and_chrf(references, references)["bleu"] == pytest.approx(100.0)
    zh = bleu_and_chrf(["北京是中国的首都"], ["北京是中国的首都"])
    assert zh["bleu"] == pytest.approx(100.0)  # the zh tokenizer splits characters


def test_generation_metrics_are_means_over_answers():
    metrics = generation_metrics(["Paris.", "Rome"], ["paris", "Berlin"])
    assert metrics["exact_match"] == 0.5 and metrics["rouge_l"] == pytest.approx(0.5)
