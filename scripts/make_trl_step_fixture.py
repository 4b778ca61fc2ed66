#!/usr/bin/env python3
"""Writes tests/fixtures/trl_step/: one GRPO update (and one SFT step) computed by TRL itself
on the tiny transformers fixture model, for tests/trl_step.rs to reproduce with our trainer.

TRL's `GRPOTrainer` is built around the tiny Gemma 3 fixture
(crates/chex-model/tests/fixtures/gemma3_tiny) with a PEFT LoRA adapter (dropout 0.1, which
TRL's `disable_dropout` must switch off), and its own `_compute_loss` is called on fixed
prompts (with images), fixed completions and fixed rewards. For each loss type (grpo, bnpo,
dr_grpo, dapo) at μ = 1 and μ = 2 (`num_iterations`) the script records, per policy update:
the loss, `kl`, `entropy`, the three clip ratios and the gradient of every adapter tensor; between
the updates of μ = 2 it takes the optimizer step the `transformers` Trainer takes (global
gradient-norm clipping, then AdamW with Hugging Face's defaults). More cases mask all but the
highest-entropy half of the tokens (`top_entropy_quantile` 0.5), leave truncated completions
out (`mask_truncated_completions`), and split the batch into two micro-batches whose gradients
accumulate (`gradient_accumulation_steps` 2, each loss type at μ = 2). The SFT case is one step
of completion-only cross-entropy (transformers' loss over the labels that are not -100).

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install torch transformers trl peft
    /tmp/peer/bin/python scripts/make_trl_step_fixture.py
"""
import json
import pathlib
import sys

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import Gemma3ForConditionalGeneration, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "crates/chex-model/tests/fixtures/gemma3_tiny"
OUT = ROOT / "tests/fixtures/trl_step"

GROUP = 2
MAX_COMPLETION_LENGTH = 10
TEMPERATURE = 0.8
LEARNING_RATE = 0.01  # large enough that the second update clips (see the clip ratios), small enough that
# AdamW's sign-like first step does not amplify f32 rounding in tiny gradients past 1e-5
MAX_GRAD_NORM = 1.0
BETA = 0.15


def completions():
    # Four completions (two prompts × G = 2) of different lengths; the last one is truncated.
    g = torch.Generator().manual_seed(11)
    lengths = [6, 3, 10, 8]
    rows = []
    for n in lengths:
        ids = torch.randint(9, 400, (n,), generator=g).tolist()
        rows.append(ids)
    rows[1][-1] = 5  # ends with <end_of_turn>
    rows[3][-1] = 1  # ends with <eos>
    return rows


def build_inputs(expected, pixels, rows, rewards, image_token):
    prompts = [expected["input_ids"][i // GROUP] for i in range(len(rows))]
    width = max(len(p) for p in prompts)
    prompt_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    longest = max(len(r) for r in rows)
    completion_ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    completion_mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    r = torch.tensor(rewards, dtype=torch.float32)
    grouped = r.view(-1, GROUP)
    mean = grouped.mean(dim=1).repeat_interleave(GROUP)
    std = grouped.std(dim=1).repeat_interleave(GROUP)
    advantages = (r - mean) / (std + 1e-4)  # TRL's scale_rewards="group"
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "pixel_values": pixels[[i // GROUP for i in range(len(rows))]].contiguous(),
        "token_type_ids": (input_ids == image_token).long(),
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
        "num_images": [1] * len(rows),
    }


def adapter_grads(model):
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            grads[name.replace(".default", "")] = p.grad.detach().clone().float().contiguous()
    return grads


def fresh_model(image_token):
    base = Gemma3ForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32)
    return PeftModel.from_pretrained(base, OUT / "adapter", is_trainable=True)


def trainer_for(model, tokenizer, loss_type, mu, quantile, accumulation=1):
    args = GRPOConfig(
        output_dir="/tmp/trl-step-fixture",
        per_device_train_batch_size=4 // accumulation,
        num_generations=GROUP,
        gradient_accumulation_steps=accumulation,
        num_iterations=mu,
        learning_rate=LEARNING_RATE,
        max_grad_norm=MAX_GRAD_NORM,
        beta=BETA,
        epsilon=0.15,
        epsilon_high=0.22,
        loss_type=loss_type,
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=TEMPERATURE,
        top_entropy_quantile=quantile,
        report_to=[],
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        max_steps=10,
        disable_dropout=True,  # the adapter has dropout 0.1; TRL switches it off only when asked
    )
    data = Dataset.from_dict({"prompt": ["x"] * 4})
    trainer = GRPOTrainer(
        model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
        train_dataset=data, processing_class=tokenizer,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.current_gradient_accumulation_steps = accumulation  # set by the training loop, not run here
    return trainer


def logps(trainer, model, inputs):
    with torch.no_grad():
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        out, _, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, mask, inputs["completion_ids"].size(1),
            pixel_values=inputs["pixel_values"], token_type_ids=inputs["token_type_ids"],
            num_images=inputs["num_images"])
    return out


def truncated(rows):
    # TRL's rule: a completion whose last id is neither an end-of-sequence id nor padding.
    return [r[-1] not in (0, 1, 5) for r in rows]


def micro_batch(inputs, start, end):
    # One accumulation window's rows, as TRL's _prepare_inputs splits the generation batch.
    part = {}
    for key, value in inputs.items():
        if key == "num_items_in_batch":
            part[key] = value  # the whole generation batch's count
        elif key == "num_images":
            part[key] = value[start:end]
        else:
            part[key] = value[start:end]
    return part


def run_case(tokenizer, expected, pixels, rows, rewards, image_token, loss_type, mu, quantile, tensors, name,
             mask_truncated=False, accumulation=1):
    torch.manual_seed(0)
    model = fresh_model(image_token)
    trainer = trainer_for(model, tokenizer, loss_type, mu, quantile, accumulation)
    model = trainer.model
    model.train()
    inputs = build_inputs(expected, pixels, rows, rewards, image_token)
    if mask_truncated:  # as _generate_and_score_completions does with mask_truncated_completions
        keep = (~torch.tensor(truncated(rows))).unsqueeze(1).int()
        inputs["completion_mask"] = inputs["completion_mask"] * keep
        inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    with model.disable_adapter():
        inputs["ref_per_token_logps"] = logps(trainer, model, inputs)
    if mu > 1:
        inputs["old_per_token_logps"] = logps(trainer, model, inputs)
    updates = []
    for iteration in range(mu):
        trainer._metrics["train"].clear()
        size = len(rows) // accumulation
        total = 0.0
        for start in range(0, len(rows), size):
            loss = trainer._compute_loss(model, micro_batch(inputs, start, start + size))
            loss.backward()
            total += loss.item()
        m = trainer._metrics["train"]
        mean = lambda key: sum(m[key]) / len(m[key])  # TRL logs the window's mean
        updates.append({
            "loss": total,
            "kl": mean("kl"),
            "entropy": mean("entropy"),
            "clip_low": mean("clip_ratio/low_mean"),
            "clip_high": mean("clip_ratio/high_mean"),
            "clip_region": mean("clip_ratio/region_mean"),
        })
        for key, grad in adapter_grads(model).items():
            tensors[f"{name}/{iteration}/{key}"] = grad
        # The Trainer's optimizer step: clip the global norm, AdamW, schedule, zero the grads.
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad()
    return {"name": name, "loss_type": loss_type, "mu": mu, "top_entropy_quantile": quantile,
            "mask_truncated_completions": mask_truncated, "micro_batch": len(rows) // accumulation,
            "updates": updates}


def sft_case(expected, pixels, rows, image_token, tensors):
    model = fresh_model(image_token)
    model.train()
    for module in model.modules():  # TRL's SFT keeps dropout; the test compares one pass, so none
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = build_inputs(expected, pixels, rows, [0.0] * len(rows), image_token)
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    labels = input_ids.clone()
    labels[:, : inputs["prompt_ids"].size(1)] = -100  # completion-only loss
    labels[torch.cat([torch.zeros_like(inputs["prompt_mask"]), inputs["completion_mask"]], dim=1) == 0] = -100
    out = model(input_ids=input_ids, attention_mask=attention, pixel_values=inputs["pixel_values"],
                token_type_ids=inputs["token_type_ids"], labels=labels)
    out.loss.backward()
    for key, grad in adapter_grads(model).items():
        tensors[f"sft/0/{key}"] = grad
    return {"name": "sft", "loss": out.loss.item()}


def main():
    expected = json.loads((MODEL / "expected.json").read_text())
    from safetensors.torch import load_file
    pixels = load_file(MODEL / "expected.safetensors")["pixel_values"]
    config = json.loads((MODEL / "config.json").read_text())
    image_token = config["image_token_index"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(MODEL / "tokenizer.json"),
                                        pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    OUT.mkdir(parents=True, exist_ok=True)

    # The adapter: r 4 / α 8 / dropout 0.1 on the language model's q, v and down projections,
    # B drawn at random (PEFT's zero B would give A no gradient).
    torch.manual_seed(5)
    base = Gemma3ForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1,
        target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)"))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.2)
    peft.save_pretrained(OUT / "adapter")
    (OUT / "adapter/README.md").unlink(missing_ok=True)  # PEFT's model-card template
    adapter_config = OUT / "adapter/adapter_config.json"
    cfg = json.loads(adapter_config.read_text())
    cfg["base_model_name_or_path"] = "crates/chex-model/tests/fixtures/gemma3_tiny"
    adapter_config.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    rows = completions()
    assert truncated(rows) == [True, False, True, False], truncated(rows)

    rewards = [1.0, 0.25, 0.0, 0.75]
    tensors = {}
    cases = []
    for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
        for mu in [1, 2]:
            name = f"{loss_type}-mu{mu}"
            cases.append(run_case(tokenizer, expected, pixels, rows, rewards, image_token,
                                  loss_type, mu, 1.0, tensors, name))
    cases.append(run_case(tokenizer, expected, pixels, rows, rewards, image_token,
                          "dr_grpo", 1, 0.5, tensors, "dr_grpo-top-entropy"))
    cases.append(run_case(tokenizer, expected, pixels, rows, rewards, image_token,
                          "dapo", 1, 1.0, tensors, "dapo-mask-truncated", mask_truncated=True))
    # Two micro-batches of two rows, their gradients accumulated before each optimizer step.
    for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
        cases.append(run_case(tokenizer, expected, pixels, rows, rewards, image_token,
                              loss_type, 2, 1.0, tensors, f"{loss_type}-mu2-accumulated", accumulation=2))
    sft = sft_case(expected, pixels, rows, image_token, tensors)
    import peft as peft_module
    import transformers
    import trl
    (OUT / "cases.json").write_text(json.dumps({
        "prompts_of_rows": [i // GROUP for i in range(len(rows))],
        "completions": rows,
        "truncated": truncated(rows),
        "rewards": rewards,
        "group_size": GROUP,
        "max_completion_length": MAX_COMPLETION_LENGTH,
        "temperature": TEMPERATURE,
        "learning_rate": LEARNING_RATE,
        "max_grad_norm": MAX_GRAD_NORM,
        "beta": BETA,
        "epsilon_low": 0.15,
        "epsilon_high": 0.22,
        "cases": cases,
        "sft": sft,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft_module.__version__},
    }, indent=1))
    save_file(tensors, OUT / "gradients.safetensors")
    print(f"wrote {len(cases)} GRPO cases and the SFT step to {OUT}", file=sys.stderr)
    for c in cases:
        print(c["name"], [round(u["loss"], 6) for u in c["updates"]], [round(u["kl"], 6) for u in c["updates"]], file=sys.stderr)


if __name__ == "__main__":
    main()
