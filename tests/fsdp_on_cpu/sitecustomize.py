"""Loaded by the processes of test_strategies' CPU FSDP test (through PYTHONPATH): lets llmkit's
FSDP path run on this CPU machine over gloo. Two things differ from a GPU machine, and only these
are changed:

1. accelerate 1.15 honours its FSDP plugin only for GPU process groups (AcceleratorState keeps a
   CPU group on DDP), and llmkit refuses FSDP without CUDA for that reason: both gates are lifted
   (the state then reports FSDP, as it does on GPUs).
2. On CPU, torch's `get_model_state_dict(cpu_offload=True)` does not copy (the tensors already are
   on the CPU), so the full state dict accelerate returns shares storage that FSDP frees when it
   reshards; on a GPU it is a copy. The same gather, copied here.

Everything else (Trainer's FSDP2 arguments, fully_shard per layer, checkpoints, the gathered save,
the prompt encoder unsharded for PEFT) is the code a GPU run executes."""

import os

if os.environ.get("LLMKIT_TEST_FSDP_ON_CPU"):
    import accelerate
    import torch
    from accelerate import state
    from accelerate.utils import DistributedType

    import llmkit.training.strategies as strategies

    strategies.check_strategy = lambda *args, **kwargs: None
    honoured = state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        honoured(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # AcceleratorState copies PartialState's type back whenever it is built again.
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    state.AcceleratorState.__init__ = init
    gather = accelerate.Accelerator.get_state_dict

    def get_state_dict(self, model, unwrap=True):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(model, FSDPModule):
            return gather(self, model, unwrap)
        options = StateDictOptions(full_state_dict=True, cpu_offload=False)
        full = get_model_state_dict(model, options=options)
        return {k: v.clone() for k, v in full.items()} if torch.distributed.get_rank() == 0 else {}

    accelerate.Accelerator.get_state_dict = get_state_dict

if os.environ.get("LLMKIT_TEST_FAIL_AT_STEP") and "RANK" in os.environ:
    # An interruption for the resume test: every process fails at that step.
    import llmkit.training.trainer as trainer

    fail_at = int(os.environ["LLMKIT_TEST_FAIL_AT_STEP"])
    step = trainer.LlmkitTrainer.training_step

    def failing_step(self, *args, **kwargs):
        if self.state.global_step == fail_at:
            raise RuntimeError(f"interrupted at step {fail_at}")
        return step(self, *args, **kwargs)

    trainer.LlmkitTrainer.training_step = failing_step
