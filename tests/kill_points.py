"""Run `lora-hf train` and SIGKILL the process at a chosen point (a helper of test_fault_tolerance.py).

    python tests/kill_points.py <point> <train flags...>

Points (phase is `pretrain` or `finetune`):
    mid-checkpoint:<phase>:<step>  the checkpoint's model files are written, its optimizer and state are not
    torn-state:<phase>:<step>      the checkpoint's trainer_state.json is half written
    step:<phase>:<step>            inside the training step after <step> (before that step's checkpoint)
    final-save:<phase>             after the phase's final model is written, before its results
    between-phases                 phase 1 is complete, phase 2 has not started
"""

import json
import os
import signal
import sys


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _phase(trainer) -> str:
    return os.path.basename(os.path.normpath(trainer.args.output_dir))


def arm(point: str) -> None:
    from transformers import Trainer, TrainerState

    import lora_hf.training as training

    kind, _, rest = point.partition(":")
    phase, _, step = rest.partition(":")
    if kind == "mid-checkpoint":
        save_optimizer = Trainer._save_optimizer_and_scheduler

        def patched(self, output_dir):
            if _phase(self) == phase and self.state.global_step == int(step):
                _die()
            return save_optimizer(self, output_dir)

        Trainer._save_optimizer_and_scheduler = patched
    elif kind == "torn-state":
        save_state = TrainerState.save_to_json

        def patched(self, json_path):
            if f"{os.sep}{phase}{os.sep}checkpoint-{step}{os.sep}" in json_path:
                text = json.dumps({"global_step": self.global_step, "log_history": []}, indent=2)
                with open(json_path, "w") as f:
                    f.write(text[: len(text) // 2])
                _die()
            return save_state(self, json_path)

        TrainerState.save_to_json = patched
    elif kind == "step":
        training_step = Trainer.training_step

        def patched(self, *args, **kwargs):
            if _phase(self) == phase and self.state.global_step == int(step):
                _die()
            return training_step(self, *args, **kwargs)

        Trainer.training_step = patched
    elif kind == "final-save":
        save_state = Trainer.save_state

        def patched(self):
            if _phase(self) == phase:
                _die()
            return save_state(self)

        Trainer.save_state = patched
    elif kind == "between-phases":
        training.TwoPhaseRun.finetune = lambda *args, **kwargs: _die()
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from lora_hf.training import main

    sys.exit(main(sys.argv[2:]))
