"""`llmft eval`: measure a model on held-out data — language-modelling loss, generated answers
against the references, preference and reward-model accuracy, win rate judged by a reward model —
and put two models side by side (`--compare`), e.g. before and after a stage."""
