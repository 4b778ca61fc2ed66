#!/usr/bin/env python3
"""The peer's LoRA scoring pass under PyTorch's profiler, to set beside `chex bench --profile`.

The pass is the one ../shared/peer/hf_gpu_baseline.py times: transformers' Gemma3ForConditional-
Generation at MedGemma-4B shapes (random weights) with PEFT LoRA r16/a32/dropout 0.1 on the seven
language-model projections, 2 prompts × 4 samples = 8 rows of 280 prompt and 128 completion
tokens, logits_to_keep = 129, the log-softmax in f32 at temperature 0.8, the log-probabilities'
sum backwards. One warm-up pass, three timed ones (the median is printed), then one profiled
pass written as OUT_DIR/peer-score-trace.json, the format `scripts/traffic-census.py` reads; on a
GPU the line also gives the kernels' summed time and the longest kernels, as ours does.

On a CPU a whole MedGemma-4B pass does not fit 24 GB: keep a few layers per tower, as
`chex bench --layers N` does, and subtract two such runs for one layer's share.

    scripts/peer-scoring-profile.py OUT_DIR [--device cuda] [--dtype bf16] [--layers N]
        [--vision-layers N] [--vision-head]
    scripts/traffic-census.py OUT_DIR/peer-score-trace.json

Needs torch, transformers and peft (../shared/peer/README.md has a recipe).
"""

import argparse
import collections
import json
import os
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

PROMPTS, SAMPLES, PROMPT_TEXT, IMAGE_TOKENS, NEW = 2, 4, 24, 256, 128
TEMPERATURE = 0.8


def medgemma_config(layers, vision_layers, vision_head):
    """MedGemma-4B's shapes, as the peer script builds them, with the layers asked for."""
    return Gemma3Config(
        text_config=dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                         vocab_size=262208, sliding_window=1024, query_pre_attn_scalar=256,
                         max_position_embeddings=131072),
        # The peer leaves SigLIP's pooling head on (transformers' default) though Gemma 3 never
        # reads it; on a CPU its batched product copies a weight per patch (22 GB).
        vision_config=dict(hidden_size=1152, intermediate_size=4304,
                           num_hidden_layers=vision_layers, num_attention_heads=16,
                           image_size=896, patch_size=14, num_channels=3,
                           vision_use_head=vision_head),
        mm_tokens_per_image=IMAGE_TOKENS, image_token_index=262144, boi_token_index=255999,
        eoi_token_index=256000)


def scoring_pass(model, config, device, dtype):
    """The peer's inputs and a closure running its forward and backward pass once."""
    text = torch.randint(20, 1000, (PROMPTS, PROMPT_TEXT), device=device)
    image = torch.full((PROMPTS, IMAGE_TOKENS), config.image_token_index, device=device)
    prompt = torch.cat([text[:, :4], image, text[:, 4:]], 1)
    pixels = torch.rand(PROMPTS, 3, 896, 896, device=device, dtype=dtype) * 2 - 1
    rows = PROMPTS * SAMPLES
    completion = torch.arange(30, 30 + NEW, device=device).repeat(rows, 1)
    ids = torch.cat([prompt.repeat_interleave(SAMPLES, 0), completion], 1)
    pixels = pixels.repeat_interleave(SAMPLES, 0)
    token_types = (ids == config.image_token_index).long()

    def run():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       token_type_ids=token_types, pixel_values=pixels,
                       logits_to_keep=NEW + 1).logits
        logits = logits[:, :-1, :].float() / TEMPERATURE
        logprobs = torch.gather(logits.log_softmax(-1), 2, completion.unsqueeze(-1)).squeeze(-1)
        logprobs.sum().backward()

    return run


def kernel_summary(trace_path, top):
    """The kernels' summed time (one stream: the GPU's busy time) and the longest kernels."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "kernel":
            kernels[e["name"]][0] += 1
            kernels[e["name"]][1] += e["dur"] / 1e6
    busy = sum(seconds for _, seconds in kernels.values())
    longest = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]
    return busy, [dict(name=name[:120], calls=calls, seconds=round(seconds, 6))
                  for name, (calls, seconds) in longest]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--layers", type=int, default=34, help="decoder layers (MedGemma: 34)")
    parser.add_argument("--vision-layers", type=int, default=None,
                        help="SigLIP layers (MedGemma: 27; default: as many as --layers, at most 27)")
    parser.add_argument("--vision-head", action="store_true",
                        help="keep SigLIP's unused pooling head, as the peer script does")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vision_layers = min(args.layers, 27) if args.vision_layers is None else args.vision_layers
    if args.layers < 1 or vision_layers < 0:
        parser.error("--layers must be at least 1 and --vision-layers at least 0")
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    os.makedirs(args.out_dir, exist_ok=True)

    torch.manual_seed(0)
    config = medgemma_config(args.layers, vision_layers, args.vision_head)
    with torch.device(args.device):
        model = Gemma3ForConditionalGeneration(config).to(dtype)
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.1,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"))
    model.train()
    run = scoring_pass(model, config, args.device, dtype)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    times = []
    for i in range(args.repeats + 1):
        sync()
        start = time.perf_counter()
        run()
        sync()
        if i:
            times.append(time.perf_counter() - start)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        run()
        sync()
    trace = os.path.join(args.out_dir, "peer-score-trace.json")
    prof.export_chrome_trace(trace)
    line = dict(probe="peer_score_profile", device=args.device, dtype=args.dtype,
                layers=args.layers, vision_layers=vision_layers, rows=PROMPTS * SAMPLES,
                completion=NEW, median_s=round(statistics.median(times), 4), trace=trace)
    if cuda:
        busy, longest = kernel_summary(trace, 12)
        line.update(gpu_busy_seconds=round(busy, 4), top=longest,
                    peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
