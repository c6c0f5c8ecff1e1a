"""Real multi-process runs: `llmft train` launches 2 CPU processes (gloo) through accelerate, with
plain data parallelism (as two "machines" on localhost, one process each) and with DeepSpeed
ZeRO-1/2/3 and CPU offload, on the tiny model.

Each launched run happens once (the `runs` fixture) and several tests read it. What is proven:
- both processes train, each on its own half of every global batch, in the order one process
  with gradient accumulation 2 would take them (recorded per rank by tests/integration/distributed_probe);
- per-step losses equal that single-process run (2 x micro-batch 2 == 1 x micro-batch 2 x accumulation 2,
  fp32) within 1e-4, for DDP over two machines, ZeRO 1 (+ optimizer offload), 2, 3 and 3 with
  optimizer and parameter offload;
- the run's files are written once; ZeRO-3 saves the complete trained model and a non-empty LoRA
  adapter, equal to the single-process run's;
- resuming a ZeRO-3 run from its checkpoint gives the uninterrupted run's losses (1e-5);
- a TRL stage (KTO), whose model loads under DeepSpeed's zero.Init, trains under ZeRO-3 on CPU;
- a launcher of the user's own that contradicts the recipe is refused, every mismatch named.

The first DeepSpeed run on a machine JIT-builds DeepSpeed's shared-memory allreduce op for CPUs
(~1 min, cached in ~/.cache/torch_extensions); later runs take ~15 s each.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_recipe, write_jsonl
from safetensors.torch import load_file

PROBE = Path(__file__).parent / "distributed_probe"
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Tell me fact number {i}."},
            {"role": "assistant", "content": f"Fact {i}: {i} comes after {i - 1}."},
        ]
    }
    for i in range(1, 17)
]
STEPS = 4
#: DeepSpeed's JIT-built ops (the CPU shared-memory allreduce) where torch keeps them by default;
#: conftest points XDG_CACHE_HOME at a fresh directory, which would rebuild them every session.
TORCH_EXTENSIONS = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")

#: name -> (finetune mode, distributed section, extra training keys)
LAUNCHED = {
    "ddp_two_machines": ("full", {"num_machines": 2, "main_process_ip": "127.0.0.1"}, {}),
    "zero1_offload": ("full", {"zero_stage": 1, "offload": "optimizer"}, {}),
    "zero2": ("full", {"zero_stage": 2}, {"report_to": ["tensorboard"]}),
    "zero3": ("full", {"zero_stage": 3}, {"save_strategy": "steps", "save_steps": 2}),
    "zero3_offload_lora": ("lora", {"zero_stage": 3, "offload": "optimizer_and_params"}, {}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_for(model_dir: Path, data: Path, out: Path, mode: str, processes: int, distributed: dict, **training) -> dict:
    settings = {"max_steps": STEPS, "micro_batch_size": 2, "gradient_accumulation_steps": 2 // processes, **training}
    raw = make_recipe(model_dir, data, out, mode=mode, data={"cache": False}, training=settings)
    if processes > 1 or distributed:
        raw["distributed"] = {"num_processes": processes, "main_process_port": free_port(), **distributed}
    return raw


@dataclass
class Run:
    out: Path
    returncode: int
    stdout: str
    stderr: str
    ranks: list[dict]

    @property
    def losses(self) -> dict[int, float]:
        state = json.loads((self.out / "trainer_state.json").read_text())
        return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def launch(raw: dict, root: Path, machines: int = 1, **environ: str) -> Run:
    """`python -m llmft train RECIPE` in a subprocess, as a user runs it (with several machines: one
    command per machine, `distributed.machine_rank=K` on the command line); the probe records each rank."""
    root.mkdir(parents=True, exist_ok=True)
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    probe_dir = root / "probe"
    env = {
        **os.environ,
        "LLMFT_TEST_PROBE": str(probe_dir),
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": TORCH_EXTENSIONS,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
        **environ,
    }
    command = [sys.executable, "-m", "llmft", "train", str(recipe_file)]
    machine = [command + ([f"distributed.machine_rank={k}"] if machines > 1 else []) for k in range(machines)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in machine]
    outputs = [p.communicate(timeout=900) for p in procs]
    ranks = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank*.json"))]
    code = max(p.returncode for p in procs)
    return Run(Path(raw["output"]["dir"]), code, "".join(o for o, _ in outputs), "".join(e for _, e in outputs), ranks)


def train_in_process(raw: dict, probe_dir: Path) -> Run:
    """The single-process reference, in this process (one thread, as each launched process has)."""
    import llmft.run
    from llmft.config import validate_recipe

    sys.path.insert(0, str(PROBE))
    try:
        from probe_record import install
    finally:
        sys.path.remove(str(PROBE))
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llmft.run, "_train_guarded", llmft.run._train_guarded)  # restored afterwards
        install(llmft.run, str(probe_dir))
        torch.set_num_threads(1)
        try:
            llmft.run.train(validate_recipe(raw))
        finally:
            torch.set_num_threads(threads)
    return Run(Path(raw["output"]["dir"]), 0, "", "", [json.loads((probe_dir / "rank0.json").read_text())])


class Runs:
    """Each run at most once per module, started by the first test that needs it."""

    def __init__(self, root: Path, model_dir: Path):
        self.root, self.model_dir = root, model_dir
        self.data = write_jsonl(root / "facts.jsonl", ROWS)
        self.done: dict[str, Run] = {}

    def reference(self, mode: str) -> Run:
        name = f"reference_{mode}"
        if name not in self.done:
            raw = recipe_for(self.model_dir, self.data, self.root / name / "out", mode, 1, {})
            self.done[name] = train_in_process(raw, self.root / name / "probe")
        return self.done[name]

    def launched(self, name: str) -> Run:
        if name not in self.done:
            mode, distributed, training = LAUNCHED[name]
            raw = recipe_for(self.model_dir, self.data, self.root / name / "out", mode, 2, distributed, **training)
            run = launch(raw, self.root / name, machines=distributed.get("num_machines", 1))
            assert run.returncode == 0, f"{name} failed:\n{run.stderr[-20000:]}"
            self.done[name] = run
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    return Runs(tmp_path_factory.mktemp("distributed"), tiny_model_dir)


# --- training on two processes --------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAUNCHED))
def test_two_processes_match_one_process_with_accumulation(runs, name):
    run, mode = runs.launched(name), LAUNCHED[name][0]
    reference = runs.reference(mode)
    stage = LAUNCHED[name][1].get("zero_stage", 0)
    assert [r["world_size"] for r in run.ranks] == [2, 2]
    assert [r["processes"] for r in run.ranks] == [2, 2]
    for record in run.ranks:
        if stage == 0:
            assert record["deepspeed"] is None
        else:
            assert record["deepspeed"]["zero_optimization"]["stage"] == stage
            assert record["deepspeed"]["train_batch_size"] == 4  # 2 processes x 2 x accumulation 1
    # each rank trains on its own micro-batch of every global batch, in the single-process order
    ref_batches = reference.ranks[0]["batches"]
    rank0, rank1 = run.ranks[0]["batches"], run.ranks[1]["batches"]
    assert len(rank0) == len(rank1) == STEPS and len(ref_batches) == 2 * STEPS
    assert rank0 == ref_batches[0::2] and rank1 == ref_batches[1::2]
    assert all(a != b for a, b in zip(rank0, rank1))
    # the same losses, step by step
    ours, theirs = run.losses, reference.losses
    assert sorted(ours) == sorted(theirs) == list(range(1, STEPS + 1))
    for step in ours:
        assert abs(ours[step] - theirs[step]) < 1e-4, (name, step, ours[step], theirs[step])
    assert ours[STEPS] < ours[1]


@pytest.mark.parametrize(
    "name, offloaded", [("zero1_offload", {"offload_optimizer"}), ("zero3_offload_lora", {"offload_optimizer", "offload_param"})]
)
def test_offload_reaches_deepspeed(runs, name, offloaded):
    zero = runs.launched(name).ranks[0]["deepspeed"]["zero_optimization"]
    assert {k for k in ("offload_optimizer", "offload_param") if zero.get(k, {}).get("device") == "cpu"} == offloaded


def test_outputs_are_written_once_by_process_zero(runs):
    run = runs.launched("zero2")
    assert run.stdout.count("trained: ") == 1
    log = run.stderr
    assert log.count("[llmft] launching 2 processes, DeepSpeed zero2.json: ") == 1
    for line in ("precision: fp32", "step 1/4 (", "done: "):
        assert log.count(line) == 1, (line, log[-3000:])
    assert len(re.findall(r"step 4/4 \(\d+:\d\d elapsed\) loss=", log)) == 1, log[-3000:]  # process 0 only
    files = {p.name for p in run.out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer_state.json",
        "train_results.json",
        "recipe.resolved.yaml",
    } <= files
    assert "training_args.bin" not in files
    assert len(list((run.out / "logs").glob("events.out.tfevents.*"))) == 1
    resolved = yaml.safe_load((run.out / "recipe.resolved.yaml").read_text())
    assert resolved["distributed"]["num_processes"] == 2 and resolved["distributed"]["zero_stage"] == 2


def test_two_machines_each_launch_their_own_process(runs):
    run = runs.launched("ddp_two_machines")
    for k in (0, 1):
        assert run.stderr.count(f"[llmft] launching 1 process on machine {k} (2 on 2 machines): ") == 1
    assert run.stdout.count("trained: ") == 1  # global process 0 only
    assert (run.out / "model.safetensors").is_file()


# --- what ZeRO-3 saves ----------------------------------------------------------------------


def test_zero3_saves_the_complete_trained_model(runs, tiny_model_dir):
    saved = load_file(str(runs.launched("zero3").out / "model.safetensors"))
    reference = load_file(str(runs.reference("full").out / "model.safetensors"))
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    assert saved.keys() == reference.keys() == initial.keys()
    for key in saved:
        assert saved[key].shape == initial[key].shape, key
        assert torch.allclose(saved[key], reference[key], atol=1e-5), key
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)  # trained, not the start


def test_zero3_saves_a_complete_lora_adapter(runs):
    run = runs.launched("zero3_offload_lora")
    saved = load_file(str(run.out / "adapter_model.safetensors"))
    reference = load_file(str(runs.reference("lora").out / "adapter_model.safetensors"))
    assert saved.keys() == reference.keys() and saved
    for key in saved:
        assert saved[key].numel() > 0 and saved[key].shape == reference[key].shape, key
        assert torch.allclose(saved[key], reference[key], atol=1e-5), key
    assert all(saved[k].abs().sum() > 0 for k in saved if "lora_B" in k)  # B starts at zero: it trained


# --- resume ---------------------------------------------------------------------------------


def test_stopped_then_resumed_under_zero3_matches_the_uninterrupted_run(runs):
    """SIGTERM reaches process 1 only, after step 3: both processes stop at that step and write a
    ZeRO-3 checkpoint; `resume_from_checkpoint: auto` then continues to the uninterrupted losses."""
    straight = runs.launched("zero3")
    mode, distributed, training = LAUNCHED["zero3"]
    root = runs.root / "zero3_stopped"
    raw = recipe_for(runs.model_dir, runs.data, root / "out", mode, 2, distributed, **training)
    stopped = launch(raw, root, LLMFT_TEST_SIGTERM="3,1")
    assert stopped.returncode != 0
    assert stopped.stderr.count("training stopped; checkpoint written: ") == 2  # each process, the same checkpoint
    checkpoint = root / "out" / "checkpoint-3"
    assert (checkpoint / "trainer_state.json").is_file() and any(p.name == "global_step3" for p in checkpoint.iterdir())
    assert not (root / "out" / "model.safetensors").exists()

    raw["training"]["resume_from_checkpoint"] = "auto"
    resumed = launch(raw, root / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert "resuming checkpoint-3" in resumed.stderr
    assert len(resumed.ranks[0]["batches"]) == STEPS - 3  # step 4 only
    first, second = straight.losses, resumed.losses
    assert sorted(second) == list(range(1, STEPS + 1))
    for step in first:
        assert abs(first[step] - second[step]) < 1e-5, (step, first[step], second[step])
    a, b = load_file(str(straight.out / "model.safetensors")), load_file(str(resumed.out / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# --- a TRL stage ------------------------------------------------------------------------------


def test_a_trl_stage_trains_under_zero3(runs, tmp_path):
    """KTO builds its TrainingArguments before the model, so transformers loads the model under
    DeepSpeed's zero.Init: on CPU that needs `llmft.launch.cpu_shims` (without it: "train_batch_size
    ... 8 != 4 * 1 * 1")."""
    rows = [
        {"prompt": r["messages"][0]["content"], "completion": r["messages"][1]["content"], "label": i % 2 == 0}
        for i, r in enumerate(ROWS)
    ]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    raw = make_recipe(
        runs.model_dir,
        data,
        tmp_path / "out",
        stage="kto",
        mode="lora",
        data={"cache": False},
        training={"max_steps": 2, "micro_batch_size": 4},
    )
    raw["distributed"] = {"num_processes": 2, "zero_stage": 3, "main_process_port": free_port()}
    run = launch(raw, tmp_path)
    assert run.returncode == 0, run.stderr[-6000:]
    assert [r["world_size"] for r in run.ranks] == [2, 2]
    losses = run.losses
    assert sorted(losses) == [1, 2] and all(0 < loss < 10 for loss in losses.values())
    assert load_file(str(tmp_path / "out" / "adapter_model.safetensors"))


# --- a launcher that contradicts the recipe ---------------------------------------------------


def test_own_launcher_contradicting_the_recipe_is_refused_with_every_mismatch(runs, tmp_path):
    """`accelerate launch --config_file mine.yaml -m llmft train` with 1 process and ZeRO-2 against
    a recipe for 2 processes without DeepSpeed: llmft does not launch again, and one error names
    both recipe keys with the launcher's values (read from what accelerate 1.15 exports)."""
    raw = recipe_for(runs.model_dir, runs.data, tmp_path / "out", "full", 2, {})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    config = tmp_path / "mine.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "compute_environment": "LOCAL_MACHINE",
                "distributed_type": "DEEPSPEED",
                "num_processes": 1,
                "num_machines": 1,
                "machine_rank": 0,
                "main_process_port": free_port(),
                "use_cpu": True,
                "deepspeed_config": {"zero_stage": 2, "deepspeed_multinode_launcher": "standard"},
            }
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            "-m",
            "llmft",
            "train",
            str(recipe_file),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": TORCH_EXTENSIONS},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "contradicts the launcher" in proc.stderr
    assert "distributed.num_processes is 2 but the launcher started 1 process (WORLD_SIZE)" in proc.stderr
    assert "launching" not in proc.stderr
    assert "distributed.zero_stage is 0 (no DeepSpeed) but the launcher runs DeepSpeed ZeRO-2" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
