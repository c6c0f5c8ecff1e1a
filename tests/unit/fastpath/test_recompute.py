"""Norm and SwiGLU outputs rebuilt in backward (`llmft.fastpath.recompute`): with LoRA on every
linear layer of the tiny Llama, the inputs the q/k/v, gate/up and down adapters would keep are
packed as notes and the loss and every gradient are bit for bit those of keeping them;
nothing is packed without gradients, while compiling, under gradient checkpointing, or for a tensor changed in place."""

from __future__ import annotations

import copy

import torch
from test_fused_lora import lora_model, run

from llmft.fastpath import recompute
from llmft.fastpath.fused_ops import apply_fused_ops


def _notes(fn) -> int:
    before = recompute.notes_made
    fn()
    return recompute.notes_made - before


def test_rebuilt_inputs_give_the_same_bits():
    ids = torch.randint(0, 64, (2, 12))
    kept = lora_model()
    rebuilt = copy.deepcopy(kept)
    apply_fused_ops(kept)
    del kept.get_base_model().model.forward  # the class's forward again: nothing rebuilt
    assert apply_fused_ops(rebuilt)["rebuilt"] == 1
    assert _notes(lambda: run(kept, ids)) == 0
    results = []
    # q, k, v, gate, up, down per layer; not layer 0's q/k/v: the embeddings it would rebuild them from
    # are frozen, so kept only for that (a norm output that needs no gradient is not registered)
    assert _notes(lambda: results.append(run(rebuilt, ids))) == 2 * 6 - 3
    loss_kept, grads_kept = run(kept, ids)
    loss_rebuilt, grads_rebuilt = results[0]
    assert loss_kept == loss_rebuilt and grads_kept.keys() == grads_rebuilt.keys()
    for name in grads_kept:
        assert torch.equal(grads_kept[name], grads_rebuilt[name]), name


def test_nothing_packed_without_gradients_while_compiling_or_under_checkpointing(monkeypatch):
    ids = torch.randint(0, 64, (2, 12))
    model = lora_model()
    apply_fused_ops(model)
    with torch.no_grad():
        assert _notes(lambda: model(input_ids=ids)) == 0
    with monkeypatch.context() as patched:
        patched.setattr(torch.compiler, "is_compiling", lambda: True)
        assert _notes(lambda: model(input_ids=ids, labels=ids).loss.backward()) == 0
    assert _notes(lambda: model(input_ids=ids, labels=ids).loss.backward()) > 0
    model.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    assert _notes(lambda: model(input_ids=ids, labels=ids).loss.backward()) == 0


def test_a_tensor_changed_in_place_is_kept():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    with recompute.rebuilding():
        out = recompute.register(x * 2, lambda t: t * 2, x)
        out.add_(1)  # no longer what the note would rebuild
        before = recompute.notes_made
        y = out @ w
    assert recompute.notes_made == before
    y.sum().backward()
    torch.testing.assert_close(w.grad, (x.detach() * 2 + 1).t() @ torch.ones(3, 5))
