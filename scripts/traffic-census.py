#!/usr/bin/env python3
"""Where a scoring pass's memory traffic goes, from a `chex bench --profile` trace.

On a GPU a MedGemma-4B scoring pass is bound by memory traffic as much as by its products, and
a GPU is not always at hand. The operators a libtorch pass issues are the same on `tch-cpu` as
on `tch-cuda`, so a CPU profile at the model's widths (`--layers` keeps a few of its layers)
shows every element-wise pass, copy and product with its shapes and dtypes. This script sums,
per operator and input shape, the bytes each element-wise call reads and writes, and prices
them and each product (by its FLOPs or its bytes, whichever bounds it) at a GPU's bandwidth and
bf16 throughput: a model of the GPU's time that finds a needless copy or pass without a GPU.

It models what CUDA would run, not what the CPU ran:
- `rms_norm` is one kernel forward and one backward on CUDA (`_fused_rms_norm`), a composite of
  calls with an autograd node each on the CPU: counted as the CUDA kernels.
- A batched product's CPU kernel copies an expanded or strided operand first; cuBLAS reads it
  in place: those copies are left out.
- A conversion to the dtype a tensor already has calls nothing and costs nothing.
It stays arithmetic, not a measurement: CUDA kernels reach less than the card's bandwidth on
small or broadcasting operands, and launches cost the host time.

    chex bench --preset medgemma-4b --layers 2 --device tch-cpu --dtype bf16 --figures score \
        --repeats 1 --gradient-checkpointing false --profile DIR
    scripts/traffic-census.py DIR/score-trace.json [--bandwidth 3.5e12] [--flops 6.5e14] [--top 30]

With `--minus` the census of a second trace is subtracted entry by entry: the same pass at
`--layers 2` minus `--layers 1` is what one layer of each tower costs.

The trace of `scripts/peer-scoring-profile.py` (transformers and PEFT's pass) reads the same way.
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
    # A conversion that calls nothing converts nothing (a real one calls `_to_copy`).
    "aten::to", "aten::type_as", "aten::contiguous",
}
# Reductions write next to nothing; fills and random draws read nothing.
REDUCTIONS = {"aten::sum", "aten::max", "aten::amax", "aten::mean", "aten::min", "aten::argmax"}
# Binary operators whose `out` forms (the CPU's in-place scalar ones call them) take the output
# as their last argument.
OUT_VARIANTS = {"aten::mul", "aten::add", "aten::sub", "aten::div"}
# Reads of some entries of a table, given an index tensor (its last tensor input): whole rows
# of the table's first dimension, or single entries.
ROW_GATHERS = {"aten::index_select", "aten::embedding"}
GATHERS = ROW_GATHERS | {"aten::gather", "aten::take"}
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


# Operators CUDA runs as one kernel and the CPU as a composite of calls (each with its own
# autograd node): counted as the one kernel, their backward nodes as the one backward kernel.
FUSED_ON_CUDA = {"aten::_fused_rms_norm"}
BACKWARD_NODE = "autograd::engine::evaluate_function: "
# Batched products whose CPU kernels copy a strided or expanded operand before multiplying;
# cuBLAS reads those (a stride-0 batch included) where they lie.
STAGING_PRODUCTS = {"aten::bmm", "aten::baddbmm"}


def walk(events):
    """Each thread's events in order, each with the indices of its ancestors."""
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack, ancestry = [], []
        for e in thread:
            while stack and thread[stack[-1]]["ts"] + thread[stack[-1]]["dur"] <= e["ts"]:
                stack.pop()
            ancestry.append(tuple(stack))
            stack.append(len(ancestry) - 1)
        yield thread, ancestry


def sequence(event):
    return event.get("args", {}).get("Sequence number")


def kernels(events):
    """The calls that launch a kernel on a GPU, as (event, traffic override or None): the
    innermost calls that move data (a call whose callees only convert a scalar moves its own),
    the innermost products (an attention call and the kernel call inside it count once), and
    each FUSED_ON_CUDA call; not what the CPU does on its own (the calls inside a fused
    composite and its backward nodes, a batched product's staging copies). A fused composite
    whose graph was walked backwards adds its backward kernel, modelled as reading the output's
    gradient and the input and writing the input's gradient."""
    for thread, ancestry in walk(events):
        fused_seq = {}  # sequence number of an autograd node made inside a fused call -> call
        for i, e in enumerate(thread):
            if e["name"] in FUSED_ON_CUDA and sequence(e) is not None:
                # Its nodes are numbered from its own number up to the next call's after it.
                end = next((sequence(f) for f in thread[i + 1:]
                            if f["ts"] >= e["ts"] + e["dur"] and sequence(f) is not None), None)
                for seq in range(sequence(e), end if end is not None else sequence(e) + 1):
                    fused_seq[seq] = i
        walked_back = {}
        for i, e in enumerate(thread):
            if e["name"].startswith(BACKWARD_NODE) and sequence(e) in fused_seq:
                walked_back[i] = fused_seq[sequence(e)]
        # Calls with a product, or a call that moves data, below them.
        over_products, over_traffic = set(), set()
        for i, e in enumerate(thread):
            if is_product(e):
                over_products.update(ancestry[i])
            elif e["name"] not in METADATA and traffic(e) > 0:
                over_traffic.update(ancestry[i])
        for i, e in enumerate(thread):
            above = [thread[a] for a in ancestry[i]]
            if any(a["name"] in FUSED_ON_CUDA for a in above):
                continue
            if i in walked_back or any(a in walked_back for a in ancestry[i]):
                continue
            if any(a["name"] in STAGING_PRODUCTS for a in above):
                continue
            if e["name"] in FUSED_ON_CUDA:
                yield e, None
            elif is_product(e):
                if i not in over_products:
                    yield e, None
            elif i not in over_traffic and i not in over_products:
                yield e, None
        for call in sorted(set(walked_back.values())):
            ins = list(tensors(thread[call]))
            if ins:
                stored, size, dims = ins[0]
                modelled = dict(thread[call], name="aten::_fused_rms_norm_backward (modelled)")
                yield modelled, 3 * stored * size


def product_flops(event):
    shapes = [dims for _, _, dims in tensors(event) if len(dims) >= 2]
    if event["name"].startswith(ATTENTION):
        q, k = shapes[0], shapes[1]
        flops = 4 * math.prod(q) * k[-2]
        return flops * (2.5 if "backward" in event["name"] else 1)
    a, b = shapes[-2], shapes[-1]
    return 2 * math.prod(a[:-1]) * a[-1] * b[-1]


def product_bytes(event):
    """Bytes a product reads (its operands, an expanded batch once) and writes (its output in
    the first operand's dtype); attention kernels keep their scores on chip and are priced by
    their FLOPs alone."""
    if event["name"].startswith(ATTENTION):
        return 0
    ins = [t for t in tensors(event) if len(t[2]) >= 2]
    if len(ins) < 2:
        return 0
    (_, _, a), (_, _, b) = ins[-2], ins[-1]
    return sum(n * size for n, size, _ in ins) + math.prod(a[:-1]) * b[-1] * ins[-2][1]


def traffic(event):
    """Bytes read and written, taking the largest input's size (in f32 for a cast up) as the
    output's."""
    ins = list(tensors(event))
    if not ins:
        return 0
    name = event["name"]
    if not name.startswith("aten::"):
        return 0  # an autograd node: what it runs is an operator below it
    if name == "aten::copy_" and len(ins) >= 2:
        return ins[0][0] * ins[0][1] + ins[1][0] * ins[1][1]
    if name in GATHERS and len(ins) >= 2:
        # What is picked is read and written once, plus the indices; not the whole table.
        (_, size, dims), (picks, index_size, _) = ins[0], ins[-1]
        row = math.prod(dims[1:]) if name in ROW_GATHERS else 1
        return 2 * picks * row * size + picks * index_size
    types = event.get("args", {}).get("Input type", [])
    if name in OUT_VARIANTS and len(types) >= 3 and types[-1] in ELEMENT_BYTES:
        ins = ins[:-1]  # the `out` argument (after self, other and alpha): written, not read
    read = sum(n * size for n, size, _ in ins)
    largest = max(ins)
    write = largest[0] * largest[1]
    if name in REDUCTIONS:
        write = 0
    if name in WRITE_ONLY:
        read = 0
    return read + write


def census(path, bandwidth, flops):
    """The trace's kernels: element-wise rows (calls, bytes) and product rows (calls, seconds,
    calls bound by memory), each keyed by operator and first input's shape."""
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"]
                  if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    elementwise = collections.defaultdict(lambda: [0, 0])
    products = collections.defaultdict(lambda: [0, 0.0, 0])
    for e, modelled in kernels(events):
        name = e["name"]
        shapes = [dims for _, _, dims in tensors(e)]
        if is_product(e):
            # Priced by whichever bound is slower: a LoRA product of rank 16 is its reads.
            compute, memory = product_flops(e) / flops, product_bytes(e) / bandwidth
            row = products[(name, str(shapes[0]) if shapes else "")]
            row[0] += 1
            row[1] += max(compute, memory)
            row[2] += memory > compute
        elif name not in METADATA and shapes:
            row = elementwise[(name, str(shapes[0]))]
            row[0] += 1
            row[1] += traffic(e) if modelled is None else modelled
    return elementwise, products


def minus(rows, other):
    """`rows` less `other`, entry by entry: what a trace with one more layer adds."""
    for key, values in other.items():
        rows[key] = [a - b for a, b in zip(rows[key], values)]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", help="score-trace.json from chex bench --profile")
    parser.add_argument("--minus", metavar="TRACE",
                        help="subtract this trace's census (the same pass with one layer fewer "
                             "per tower: what one layer costs)")
    parser.add_argument("--bandwidth", type=float, default=3.5e12,
                        help="bytes per second the element-wise kernels reach (H200: ~3.5e12)")
    parser.add_argument("--flops", type=float, default=6.5e14,
                        help="bf16 FLOPs per second the products reach (H200: ~6.5e14)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    elementwise, products = census(args.trace, args.bandwidth, args.flops)
    if args.minus:
        print(f"difference: {args.trace} minus {args.minus}")
        other_elementwise, other_products = census(args.minus, args.bandwidth, args.flops)
        elementwise = minus(elementwise, other_elementwise)
        products = minus(products, other_products)
    launches = sum(r[0] for r in elementwise.values()) + sum(r[0] for r in products.values())
    product_seconds = sum(r[1] for r in products.values())
    bound = sum(r[2] for r in products.values())
    moved = sum(b for _, b in elementwise.values())
    print(f"kernels: {launches} (element-wise and products; fused CUDA kernels counted as one)")
    print(f"products: {product_seconds * 1e3:.1f} ms at {args.flops:.2e} FLOP/s or "
          f"{args.bandwidth:.2e} B/s, whichever bounds each ({bound} of "
          f"{sum(r[0] for r in products.values())} by memory)")
    print(f"element-wise: {moved / 1e9:.1f} GB, {moved / args.bandwidth * 1e3:.1f} ms at "
          f"{args.bandwidth:.2e} B/s")
    print(f"{'ms':>8} {'GB':>8} {'calls':>6}  operator, first input's shape")
    ranked = sorted(elementwise.items(), key=lambda kv: -kv[1][1])
    for (name, shape), (calls, moved) in ranked[:args.top]:
        print(f"{moved / args.bandwidth * 1e3:8.2f} {moved / 1e9:8.2f} {calls:6d}  {name} {shape}")
    print(f"{'ms':>8} {'bound':>8} {'calls':>6}  product, first input's shape")
    ranked = sorted(products.items(), key=lambda kv: -kv[1][1])
    for (name, shape), (calls, seconds, by_memory) in ranked[:args.top // 3]:
        kind = "memory" if by_memory * 2 > calls else "FLOPs"
        print(f"{seconds * 1e3:8.2f} {kind:>8} {calls:6d}  {name} {shape}")


if __name__ == "__main__":
    main()
