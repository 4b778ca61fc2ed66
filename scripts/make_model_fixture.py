"""Writes the model parity fixture read by crates/chex-model/tests/hf_parity.rs.

A tiny random Gemma3ForConditionalGeneration (the MedGemma architecture) is built with
Hugging Face transformers on the CPU, every parameter drawn at random (transformers' own
init leaves norms at zero and the projector at zero, which would hide bugs), and saved with
`save_pretrained` next to a small byte-level BPE tokenizer. The script then records, for two
prompts that each hold one image:
  * the token ids of the chat-formatted prompt (checks our tokenizer and prompt assembly),
  * the f32 logits of every position in one forward pass (with token_type_ids, so image
    tokens attend to each other bidirectionally as the processor arranges),
  * a 20-token greedy continuation of both prompts batched with left padding,
  * a PEFT LoRA adapter (r=4 on q/v/down projections) saved in PEFT's layout, and the logits
    of prompt 0 with that adapter active.

Sliding window 6 is shorter than the prompts, so the local layers' window is exercised.

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install torch transformers peft tokenizers safetensors
    /tmp/peer/bin/python scripts/make_model_fixture.py crates/chex-model/tests/fixtures/gemma3_tiny
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
           "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
CORPUS = [
    "<think>The cardiac silhouette is enlarged. There is blunting of the costophrenic angle.</think>",
    "<solution>Cardiomegaly, Pleural Effusion</solution>",
    "<solution>No Finding</solution>",
    "Classify this chest X-ray. List the findings among the fourteen CheXpert labels.",
    "Lungs are clear. No pneumothorax. Support devices: an endotracheal tube is in place.",
    "Patchy opacity in the right lower lobe, consistent with consolidation or pneumonia.",
    "Atelectasis, Edema, Lung Opacity, Lung Lesion, Fracture, Enlarged Cardiomediastinum.",
]


def build_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def prompt_text(question, mm_tokens):
    # Gemma 3's chat template, with the processor's expansion of the image placeholder.
    image = "\n\n<start_of_image>" + "<image_soft_token>" * mm_tokens + "<end_of_image>\n\n"
    return f"<bos><start_of_turn>user\n{image}{question}<end_of_turn>\n<start_of_turn>model\n"


def main(out):
    os.makedirs(out, exist_ok=True)
    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    assert [ids[t] for t in SPECIAL] == list(range(len(SPECIAL))), ids
    cfg = Gemma3Config(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                         sliding_window=6, max_position_embeddings=512,
                         layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                         rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                         pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, num_channels=3),
        mm_tokens_per_image=4, image_token_index=ids["<image_soft_token>"],
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
    )
    torch.manual_seed(1234)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.normal_(0.0, 0.6)
            elif "embed_tokens" in name:
                p.normal_(0.0, 0.05)
            elif p.dim() == 1:
                p.normal_(0.0, 0.05)
            else:
                p.normal_(0.0, 0.3)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out, safe_serialization=True)
    tok.save(os.path.join(out, "tokenizer.json"))

    questions = ["Findings?", "List the CheXpert findings of this chest X-ray."]
    prompts = [prompt_text(q, cfg.mm_tokens_per_image) for q in questions]
    encoded = [tok.encode(p, add_special_tokens=False).ids for p in prompts]
    g = torch.Generator().manual_seed(7)
    pixels = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    tensors = {"pixel_values": pixels.contiguous()}
    with torch.no_grad():
        for i, row in enumerate(encoded):
            input_ids = torch.tensor([row])
            tt = (input_ids == cfg.image_token_index).long()
            out_logits = model(input_ids=input_ids, pixel_values=pixels[i:i + 1], token_type_ids=tt).logits
            tensors[f"logits_{i}"] = out_logits[0].float().contiguous()
        width = max(len(r) for r in encoded)
        padded = [[0] * (width - len(r)) + r for r in encoded]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in encoded]
        input_ids = torch.tensor(padded)
        generated = model.generate(input_ids=input_ids, attention_mask=torch.tensor(mask), pixel_values=pixels,
                                   token_type_ids=(input_ids == cfg.image_token_index).long(),
                                   do_sample=False, max_new_tokens=20)
        greedy = generated[:, width:].tolist()

    from peft import LoraConfig, get_peft_model
    peft_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, peft_cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
        input_ids = torch.tensor([encoded[0]])
        tt = (input_ids == cfg.image_token_index).long()
        tensors["logits_0_lora"] = peft_model(input_ids=input_ids, pixel_values=pixels[:1],
                                              token_type_ids=tt).logits[0].float().contiguous()
    peft_model.save_pretrained(os.path.join(out, "adapter"))

    save_file(tensors, os.path.join(out, "expected.safetensors"))
    import transformers, peft
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(dict(prompts=prompts, input_ids=encoded, padded_input_ids=padded, greedy=greedy,
                       transformers=transformers.__version__, torch=torch.__version__, peft=peft.__version__),
                  f, indent=1)
    print("wrote", out, "vocab", vocab, "lengths", [len(r) for r in encoded], "greedy", greedy)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crates/chex-model/tests/fixtures/gemma3_tiny")
