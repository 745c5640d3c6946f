"""Run by tests/test_finetune.py, under torchrun or as one process: fine-tune the shipped shapes model for a few
steps and save what the test compares (each rank's parameters, the losses)."""

import json
import os
import sys

import torch

from captum_gradeclip.finetune.train import FineTuneConfig, train


def main(out: str, steps: int, loss: str) -> None:
    torch.set_num_threads(1)
    config = FineTuneConfig(out=out, loss=loss, steps=steps, batch_size=8, lr=5e-4, warmup=1, dataset_size=8,
                            save_every=steps, progress=False, log_every=1)
    result = train(config)
    rank = int(os.environ.get("RANK", "0"))
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous() for k, v in result.model.state_dict().items()},
              os.path.join(out, f"rank{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"losses": result.losses, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
