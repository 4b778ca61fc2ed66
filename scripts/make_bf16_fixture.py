"""Writes the bf16 parity fixture read by crates/chex-model/tests/hf_parity.rs.

Loads the committed tiny Gemma 3 (crates/chex-model/tests/fixtures/gemma3_tiny, written by
make_model_fixture.py) with Hugging Face transformers twice, in f32 and with
`dtype=torch.bfloat16` (how users load MedGemma), and records the logits of both prompts of
expected.json (with the same pixels) in `expected_bf16.safetensors`:
  * `logits_{i}_bf16`: transformers in bf16, widened to f32,
  * `logits_{i}_f32`: transformers in f32 (the reference the bf16 error is measured against).
`expected_bf16.json` holds the versions and, per prompt, the largest and mean absolute
difference between the two, the size of the error bf16 itself brings.

    /tmp/peer/bin/python scripts/make_bf16_fixture.py crates/chex-model/tests/fixtures/gemma3_tiny
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Gemma3ForConditionalGeneration


def main(folder):
    expected = json.load(open(os.path.join(folder, "expected.json")))
    pixels = load_file(os.path.join(folder, "expected.safetensors"))["pixel_values"]
    out, spread = {}, []
    models = {
        name: Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
        for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]
    }
    image_token = models["f32"].config.image_token_index
    with torch.no_grad():
        for i, row in enumerate(expected["input_ids"]):
            input_ids = torch.tensor([row])
            token_type_ids = (input_ids == image_token).long()
            logits = {}
            for name, model in models.items():
                px = pixels[i:i + 1].to(model.dtype)
                logits[name] = model(input_ids=input_ids, pixel_values=px,
                                     token_type_ids=token_type_ids).logits[0].float()
                out[f"logits_{i}_{name}"] = logits[name].contiguous()
            diff = (logits["bf16"] - logits["f32"]).abs()
            spread.append(dict(max_abs=diff.max().item(), mean_abs=diff.mean().item(),
                               logit_abs_mean=logits["f32"].abs().mean().item()))
    save_file(out, os.path.join(folder, "expected_bf16.safetensors"))
    import transformers
    with open(os.path.join(folder, "expected_bf16.json"), "w") as f:
        json.dump(dict(bf16_vs_f32=spread, transformers=transformers.__version__, torch=torch.__version__),
                  f, indent=1)
    print("wrote", folder, spread)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crates/chex-model/tests/fixtures/gemma3_tiny")
