"""A fingerprint of the base weights an adapter was trained on, saved next to the adapter
(`rundir.BASE_FINGERPRINT`), so that merging or loading the adapter onto another base is refused
instead of giving a model that is quietly wrong.

What it holds: for every floating-point parameter of the model's body (`model.base_model`: the
task heads, `lm_head` and a reward model's fresh `score`, are left out, so a causal LM and the
same checkpoint under a reward head share one fingerprint), its name, its shape and `SAMPLES`
values read at fixed positions. The positions depend only on the parameter's size, and lie in the
first half of it: tokens added to the vocabulary (new embedding rows, initialised at random on
every load) are never sampled. Taking one reads those values by index, nothing more; for
SmolLM2-135M it is 272 parameters, 39 KB of JSON.

How it is compared: a value matches if it is within `RTOL` (relative) of the recorded one, or
`ATOL` absolute for values near zero. One checkpoint loaded in fp32, bf16, fp16 or dequantized
from GGUF gives values within one bf16 rounding (2^-9 relative) of each other; another checkpoint
(another seed, fine-tuned weights, noise added) differs at nearly every sample. Parameters that
cannot be read here (packed by bitsandbytes, partitioned by ZeRO-3) are skipped on both sides.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmft.errors import UserError
from llmft.rundir import BASE_FINGERPRINT

log = logging.getLogger("llmft")

VERSION = 1
#: Values read per parameter.
SAMPLES = 8
#: bf16 keeps 8 significant bits: rounding moves a value by at most 2^-9 of itself, so two loads of
#: one checkpoint (fp32 vs bf16 vs fp16) differ by less than 2^-8; 2^-7 leaves a factor of 2 on top.
RTOL = 2.0**-7
#: Values near zero: fp16's spacing below its smallest normal number is 6e-8.
ATOL = 1e-6
#: Multiplier spreading the sample positions over the tensor (Knuth's multiplicative hash).
_SPREAD = 2654435761


def positions(numel: int) -> list[int]:
    """Where the samples of a parameter with `numel` values are read: the first half of it."""
    half = max(1, numel // 2)
    return [(i * _SPREAD + 1) % half for i in range(SAMPLES)]


def _readable(param: Any) -> bool:
    """A plain floating-point tensor holding its values here (not bitsandbytes-packed, not a
    ZeRO-3 partition)."""
    return param.dtype.is_floating_point and param.numel() > 0 and not hasattr(param, "ds_id")


def _body(model: Any) -> Any:
    """The transformer without its task head (a PeftModel is unwrapped to the model it wraps)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, "base_model", model)


def take(model: Any, base: str) -> dict[str, Any] | None:
    """The fingerprint of `model`'s weights as loaded (call it before an adapter is applied);
    None when no parameter can be read here (ZeRO-3 partitions every one)."""
    import torch

    params: dict[str, Any] = {}
    with torch.no_grad():
        for name, param in _body(model).named_parameters():
            if not _readable(param):
                continue
            flat = param.detach().reshape(-1)
            values = flat[torch.tensor(positions(param.numel()), device=flat.device)].float().tolist()
            params[name] = {"shape": list(param.shape), "values": [float(f"{v:.6g}") for v in values]}
    if not params:
        return None
    return {"version": VERSION, "base": base, "samples": SAMPLES, "params": params}


def write(fingerprint: dict[str, Any] | None, directory: Path) -> Path | None:
    if fingerprint is None:
        return None
    path = directory / BASE_FINGERPRINT
    path.write_text(json.dumps(fingerprint, separators=(",", ":")) + "\n")
    return path


def read(adapter_dir: Path) -> dict[str, Any] | None:
    path = adapter_dir / BASE_FINGERPRINT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not a base fingerprint ({exc}); delete it to load the adapter unchecked") from None
    if data.get("version") != VERSION or not isinstance(data.get("params"), dict):
        raise UserError(f"{path}: unknown fingerprint version {data.get('version')!r}; delete it to load the adapter unchecked")
    return data


@dataclass
class Comparison:
    compared: int = 0  # parameters compared
    differing: list[str] = field(default_factory=list)  # "name: what differs", in model order

    @property
    def same(self) -> bool:
        return not self.differing


def _close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= RTOL * max(abs(ours), abs(theirs)) + ATOL


def compare(model: Any, fingerprint: dict[str, Any]) -> Comparison:
    """`model`'s weights against a fingerprint. A recorded parameter the model lacks, or holds in
    another shape, differs; so does one with any sample out of tolerance."""
    here = take(model, base="")
    ours = here["params"] if here else {}
    names = {name for name, _ in _body(model).named_parameters()}
    result = Comparison()
    for name, recorded in fingerprint["params"].items():
        if name not in names:
            result.differing.append(f"{name}: not in this model")
            continue
        if name not in ours:
            continue  # packed or partitioned here: cannot be compared
        result.compared += 1
        if ours[name]["shape"] != recorded["shape"]:
            result.differing.append(f"{name}: shape {ours[name]['shape']} here, {recorded['shape']} in the adapter's base")
            continue
        pairs = list(zip(ours[name]["values"], recorded["values"], strict=True))
        bad = [(a, b) for a, b in pairs if not _close(a, b)]
        if bad:
            a, b = bad[0]
            result.differing.append(f"{name}: {len(bad)} of {len(pairs)} sampled values differ (e.g. {a:.6g} here, {b:.6g})")
    return result


def check_base(model: Any, adapter_dir: str | Path, base: str, fix: str) -> Comparison | None:
    """Refuse (UserError) to apply the adapter in `adapter_dir` to `model` (loaded from `base`)
    when its recorded base fingerprint says it was trained on other weights. `fix` says how to
    name the right base (the flag or recipe key). None when the adapter has no fingerprint (runs
    before llmft recorded one): the base cannot be checked, and a note says so."""
    adapter_dir = Path(adapter_dir)
    recorded = read(adapter_dir)
    if recorded is None:
        log.info(
            "note: %s has no %s (an older run): the base %s cannot be checked against it", adapter_dir, BASE_FINGERPRINT, base
        )
        return None
    result = compare(model, recorded)
    if result.same:
        if result.compared == 0:
            log.info("note: no weight of %s could be read here (quantized or partitioned): base not checked", base)
        return result
    total = len(recorded["params"])
    shown = "; ".join(result.differing[:3]) + (f"; and {len(result.differing) - 3} more" if len(result.differing) > 3 else "")
    trained_on = recorded.get("base")
    if trained_on == base:
        trained_on = " (the weights at that path have changed since the adapter was trained on them)"
    else:
        trained_on = f" (it was trained on {trained_on})" if trained_on else ""
    raise UserError(
        f"the adapter {adapter_dir} was not trained on the base {base}{trained_on}: {len(result.differing)} of {total} "
        f"parameters recorded in its {BASE_FINGERPRINT} differ from this base's ({shown}). {fix}"
    )
