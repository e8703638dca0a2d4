"""Check that the branch computes what the imported dense model computes (BAR's starting point).

python check_branch.py DENSE_DIR BRANCH_DIR   -> prints one JSON line: max |logit difference|
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(dense_dir: str, branch_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    logits = []
    for folder in (dense_dir, branch_dir):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids["input_ids"]).logits)
        name = type(model).__name__
        del model
    diff = float((logits[0] - logits[1]).abs().max())
    print(
        json.dumps(
            {
                "prompt_tokens": int(ids["input_ids"].shape[1]),
                "branch_class": name,
                "max_abs_logit_diff": diff,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
