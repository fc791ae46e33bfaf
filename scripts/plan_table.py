"""README's plan tables from the JSON plans of scripts/plan_table.sh: python scripts/plan_table.py DIR."""

import json
import pathlib
import sys

GIB = 2**30
CPU = {  # the README's XLA:CPU figures before (GiB/device)
    ("7b", "v5p-8"): 66.3,
    ("7b", "v5p-16"): 36.9,
    ("7b", "v5e-64"): 5.8,
    ("7b", "v6e-8"): 36.9,
    ("7b", "v5e-16"): 21.6,
    ("7b", "v4-8"): 66.3,
    ("1b", "v5p-8"): 36.9,
    ("1b", "v6e-8"): 20.5,
    ("1b", "v5e-16"): 11.6,
    ("1b", "v4-8"): 36.9,
}


def hms(s):
    h, r = divmod(round(s), 3600)
    return f"{h}h{r // 60:02d}m"


def load(name):
    p = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "plans") / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def gib(d):
    """Total GiB per device; "≥ X" when the compiler refused the step (X: what it reported)."""
    memory = d["memory_bytes"]
    if "compiler_refused" in d:
        return f"≥ {memory['total_at_least'] / GIB:.2f}"
    return f"{memory['total'] / GIB:.2f}"


def step(d):
    if not d["fits"]:
        return "– | –"
    s = d["step_seconds"]["total"]
    return f"{s:.1f} s | {hms(s * 1200)}"


print(
    "| model | slice | mesh (data, fsdp, tensor) | pairs per step | decode layout | GiB/device (TPU compiler) / HBM | CPU plan before | fits | step | 1200 steps |"
)
print("|---|---|---|---|---|---|---|---|---|---|")
for model in ("7b", "1b"):
    for sl in ("v5p-8", "v5p-16", "v5e-64", "v6e-8", "v5e-16", "v4-8"):
        d = load(f"{model}_{sl}")
        if d is None:
            print(
                f"| {model.upper()} | {sl} | not compiled (see below) | | | | {CPU.get((model, sl), '–')} | | | |"
            )
            continue
        m = d["mesh"]
        refused = "compiler_refused" in d  # no pairs or layout recorded: the compile stopped
        pairs = "–" if refused else d["global_pairs"]
        layout = "(refused by the compiler)" if refused else d["decode_layout"]
        print(
            f"| {model.upper()} | {sl} | {m['data']},{m['fsdp']},{m['tensor']} | {pairs} | {layout} | "
            f"{gib(d)} / {d['hbm_bytes'] / GIB:.0f} | {CPU.get((model, sl), '–')} | {'yes' if d['fits'] else 'no'} | {step(d)} |"
        )
print()
print(
    "| 7B | decode layout | collective bytes per decoded token (answers / images) | collectives per token | decode copy GiB/device | GiB/device | rollout |"
)
print("|---|---|---|---|---|---|---|")
for sl in ("v5p-8", "v5e-64"):
    for suffix in ("_train", ""):
        d = load(f"7b_{sl}{suffix}")
        if d is None:
            print(f"| {sl} | {suffix or 'auto'} | not compiled | | | | |")
            continue
        t, c = d["collective_bytes"]["per_decoded_token"], d["collectives"]["per_decoded_token"]
        r = d["step_seconds"]["rollout"]["total"] if d["step_seconds"] else float("nan")
        print(
            f"| {sl} | {d['decode_layout']} | {t['answers'] / GIB:.2f} / {t['images'] / GIB:.2f} GiB | {c['answers']:.0f} / {c['images']:.0f} | "
            f"{d['memory_bytes_analytic']['decode_layout_weights'] / GIB:.2f} | {gib(d)} | {r:.2f} s |"
        )
print()
print(
    "| 7B-LoRA (rank 16, bf16 base) | mesh | pairs per step | decode layout | GiB/device / HBM | full fine-tuning | fits | per decoded answer token | step | 1200 steps |"
)
print("|---|---|---|---|---|---|---|---|---|---|")
for sl, suffix in (
    ("v5e-8", "_lora"),
    ("v5e-8", "_lora_p4"),
    ("v5e-16", "_lora"),
    ("v4-8", "_lora"),
    ("v4-8", "_lora_replicated"),
):
    d = load(f"7b_{sl}{suffix}")
    f = load(f"7b_{sl}")
    full = gib(f) if f else "–"
    if d is None:
        print(f"| {sl} ({suffix}) | not compiled | | | | {full} | | | | |")
        continue
    m = d["mesh"]
    t, c = d["collective_bytes"]["per_decoded_token"], d["collectives"]["per_decoded_token"]
    print(
        f"| {sl} | {m['data']},{m['fsdp']},{m['tensor']} | {d['global_pairs']} | {d['decode_layout']} | "
        f"{gib(d)} / {d['hbm_bytes'] / GIB:.0f} | {full} | {'yes' if d['fits'] else 'no'} | "
        f"{t['answers'] / GIB:.1f} GiB in {c['answers']:.0f} | {step(d)} |"
    )
