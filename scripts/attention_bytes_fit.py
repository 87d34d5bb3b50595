#!/usr/bin/env python3
"""Attention online bytes per decode token against the context length, from `comet generate
--report FILE` reports: per decode step the bytes of every `attn.*` op but the norm (both
servers), an affine least-squares fit `a + b·t` over the steps (t = keys the step attends to),
its largest residual, and the fit's value at a given context.

Every per-key cost of a decode step (scores, softmax, probability opening) is linear in t, so
the fit is exact up to the wire's byte packing; the residual shows it.

usage: scripts/attention_bytes_fit.py [--at T] REPORT.json [REPORT.json ...]
"""
import argparse
import json


def attention_bytes(step):
    total = 0
    for server in step["servers"]:
        for label, (online, _offline) in server["labels"].items():
            parts = label.split("/")
            op = parts[1] if parts[0].startswith("layer.") and len(parts) > 1 else parts[0]
            if op.startswith("attn.") and op != "attn.norm":
                total += online["sent"]
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--at", type=int, default=256, help="context to evaluate the fit at")
    ap.add_argument("reports", nargs="+")
    args = ap.parse_args()
    for path in args.reports:
        report = json.load(open(path))
        prompt = report["prompt_tokens"]
        prompt = prompt if isinstance(prompt, int) else len(prompt)
        points = [(prompt + i + 1, attention_bytes(s)) for i, s in enumerate(report["decode"])]
        if len(points) < 2:
            raise SystemExit(f"{path}: needs at least two decode steps")
        n = len(points)
        mx = sum(t for t, _ in points) / n
        my = sum(b for _, b in points) / n
        slope = sum((t - mx) * (b - my) for t, b in points) / sum((t - mx) ** 2 for t, _ in points)
        icpt = my - slope * mx
        residual = max(abs(b - (icpt + slope * t)) for t, b in points)
        print(
            f"{path}: {n} decode steps, t = {points[0][0]}..{points[-1][0]}: "
            f"attention bytes = {icpt:.0f} + {slope:.1f}·t (max residual {residual:.0f} B); "
            f"measured {points[-1][1] / 1e3:.1f} KB at t = {points[-1][0]}; "
            f"fit at t = {args.at}: {(icpt + slope * args.at) / 1e3:.1f} KB"
        )


if __name__ == "__main__":
    main()
