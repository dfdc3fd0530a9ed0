"""Run by test_hf.py under `torch.distributed.run` (2 CPU processes, gloo) or alone: a Trainer with colordim, lr 0,
saving its recording (rank 0) to the folder given."""
import sys

import torch
import transformers

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_hf import Tokens, gpt2  # noqa: E402
from colordim.hf import ActivationHistogram  # noqa: E402


def main(folder: str, processes: int):
    callback = ActivationHistogram(layers=["lm_head", "transformer.h.0.mlp.c_fc"], range=(-6, 6), params=True,
                                   save_to=f"{folder}/run{processes}.npz")
    args = transformers.TrainingArguments(
        output_dir=f"{folder}/out{processes}", per_device_train_batch_size=8 // processes, num_train_epochs=1,
        learning_rate=0.0, report_to=[], logging_strategy="no", save_strategy="no", use_cpu=True, disable_tqdm=True,
        ddp_backend="gloo" if processes > 1 else None)
    transformers.Trainer(model=gpt2(), args=args, train_dataset=Tokens(64, 0), callbacks=[callback]).train()
    print("colordim worker: trained", flush=True)
    if torch.distributed.is_initialized():  # the Trainer leaves the group to interpreter exit: end it here
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], int(sys.argv[2]))
