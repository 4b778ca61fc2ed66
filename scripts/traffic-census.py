#!/usr/bin/env python3
"""Where a scoring pass's memory traffic goes, from a `chex bench --profile` trace.

On a GPU a MedGemma-4B scoring pass is bound by memory traffic as much as by its products, and
a GPU is not always at hand. The operators a libtorch pass issues are the same on `tch-cpu` as
on `tch-cuda`, so a CPU profile at the model's widths (`--layers` keeps a few of its layers)
shows every element-wise pass, copy and product with its shapes and dtypes. This script sums,
per operator and input shape, the bytes each element-wise call reads and writes and the FLOPs
of each product, and prices them at a GPU's bandwidth and bf16 throughput: a model of the GPU's
time that finds a needless copy or pass without a GPU. It is arithmetic, not a measurement; the
CPU's composite kernels (`rms_norm`'s backward, for one) are single fused kernels on CUDA.

    chex bench --preset medgemma-4b --layers 2 --device tch-cpu --dtype bf16 --figures score \
        --repeats 1 --gradient-checkpointing false --profile DIR
    scripts/traffic-census.py DIR/score-trace.json [--bandwidth 3.5e12] [--flops 6.5e14] [--top 30]

Standard library only.
"""

import argparse
import collections
import json
import math

ELEMENT_BYTES = {"c10::BFloat16": 2, "c10::Half": 2, "float": 4, "double": 8, "long int": 8,
                 "int": 4, "bool": 1}
PRODUCTS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"}
ATTENTION = ("aten::_scaled_dot_product_flash_attention", "aten::_flash_attention",
             "aten::_efficient_attention")
# Views and bookkeeping: no traffic of their own.
METADATA = {
    "aten::as_strided", "aten::view", "aten::_reshape_alias", "aten::resolve_conj",
    "aten::resolve_neg", "aten::_unsafe_view", "aten::result_type", "aten::empty",
    "aten::empty_strided", "aten::empty_like", "aten::t", "aten::transpose", "aten::expand",
    "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::permute",
    "aten::reshape", "aten::narrow", "aten::detach", "aten::alias", "aten::lift_fresh",
    "aten::unbind", "aten::split", "aten::chunk", "aten::set_", "aten::item",
    "aten::_local_scalar_dense", "aten::_has_compatible_shallow_copy_type", "detach",
}
# Reductions write next to nothing; fills and random draws read nothing.
REDUCTIONS = {"aten::sum", "aten::max", "aten::amax", "aten::mean", "aten::min", "aten::argmax"}
WRITE_ONLY = {"aten::fill_", "aten::zero_", "aten::bernoulli_", "aten::uniform_",
              "aten::normal_"}


def tensors(event):
    """(elements stored, bytes per element, shape) of each tensor input; an expanded input
    (stride 0 along a dimension) stores, and is read from memory, once along it."""
    args = event.get("args", {})
    strides = args.get("Input Strides", [])
    for i, (dims, dtype) in enumerate(zip(args.get("Input Dims", []), args.get("Input type", []))):
        if isinstance(dims, list) and dims and dtype in ELEMENT_BYTES:
            stride = strides[i] if i < len(strides) and isinstance(strides[i], list) else []
            stored = math.prod(d for j, d in enumerate(dims)
                               if j >= len(stride) or stride[j] != 0)
            yield stored, ELEMENT_BYTES[dtype], dims


def is_product(event):
    return event["name"] in PRODUCTS or event["name"].startswith(ATTENTION)


def leaves(events):
    """The operators that call no other operator (per thread), and the innermost products (an
    attention call and the kernel call inside it count once)."""
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack, parents, over_products = [], set(), set()
        for i, e in enumerate(thread):
            while stack and thread[stack[-1]]["ts"] + thread[stack[-1]]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                parents.add(stack[-1])
            if is_product(e):
                over_products.update(stack)
            stack.append(i)
        for i, e in enumerate(thread):
            if (i not in over_products) if is_product(e) else (i not in parents):
                yield e


def product_flops(event):
    shapes = [dims for _, _, dims in tensors(event) if len(dims) >= 2]
    if event["name"].startswith(ATTENTION):
        q, k = shapes[0], shapes[1]
        flops = 4 * math.prod(q) * k[-2]
        return flops * (2.5 if "backward" in event["name"] else 1)
    a, b = shapes[-2], shapes[-1]
    return 2 * math.prod(a[:-1]) * a[-1] * b[-1]


def traffic(event):
    """Bytes read and written, taking the largest input's size (in f32 for a cast up) as the
    output's."""
    ins = list(tensors(event))
    if not ins:
        return 0
    name = event["name"]
    if name == "aten::copy_" and len(ins) >= 2:
        return ins[0][0] * ins[0][1] + ins[1][0] * ins[1][1]
    read = sum(n * size for n, size, _ in ins)
    largest = max(ins)
    write = largest[0] * largest[1]
    if name in REDUCTIONS:
        write = 0
    if name in WRITE_ONLY:
        read = 0
    return read + write


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", help="score-trace.json from chex bench --profile")
    parser.add_argument("--bandwidth", type=float, default=3.5e12,
                        help="bytes per second the element-wise kernels reach (H200: ~3.5e12)")
    parser.add_argument("--flops", type=float, default=6.5e14,
                        help="bf16 FLOPs per second the products reach (H200: ~6.5e14)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    with open(args.trace) as f:
        events = [e for e in json.load(f)["traceEvents"]
                  if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    product_seconds, rows = 0.0, collections.defaultdict(lambda: [0, 0])
    for e in leaves(events):
        name = e["name"]
        if is_product(e):
            product_seconds += product_flops(e) / args.flops
        elif name not in METADATA:
            shapes = [dims for _, _, dims in tensors(e)]
            if not shapes:
                continue
            row = rows[(name, str(shapes[0]))]
            row[0] += 1
            row[1] += traffic(e)
    moved = sum(b for _, b in rows.values())
    print(f"products: {product_seconds * 1e3:.1f} ms at {args.flops:.2e} FLOP/s")
    print(f"element-wise: {moved / 1e9:.1f} GB, {moved / args.bandwidth * 1e3:.1f} ms at "
          f"{args.bandwidth:.2e} B/s")
    print(f"{'ms':>8} {'GB':>8} {'calls':>6}  operator, first input's shape")
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])
    for (name, shape), (calls, moved) in ranked[:args.top]:
        print(f"{moved / args.bandwidth * 1e3:8.2f} {moved / 1e9:8.2f} {calls:6d}  {name} {shape}")


if __name__ == "__main__":
    main()
