"""HuBERT Base speed: speechkit vs Hugging Face ``transformers.HubertModel``, and GPU throughput.

Run from the repository root::

    .venv/bin/python benchmarks/hubert_step.py [--quick] [--compile]     # CPU comparison
    .venv/bin/python benchmarks/hubert_step.py --device cuda [--batch 8 --seconds 10] [--compile]

CPU (``--device cpu``, the default): forward and forward+backward time of HuBERT Base (Hsu et al.
2021; fairseq ``hubert.py``) on ``--cpu-batch`` x ``--cpu-seconds`` of 16 kHz audio,
speechkit's ``HubertModel`` vs ``transformers.HubertModel`` holding the same weights, in the
same process, interleaved so that machine load hits both alike. Dropout, LayerDrop and masking
are off in both (same arithmetic); the conv feature extractor gets gradients in both
(feature_grad_mult=1). ``--compile`` wraps the speechkit model in ``torch.compile`` (the
transformers model stays eager). The run fails (exit status 1, no JSON line) when the two
outputs differ by more than ``--tolerance`` (default 1e-4). JSON line: forward+backward
audio-seconds per second, speechkit vs transformers (ratio > 1: speechkit is faster; goal with
``--compile``: >= 1.3).

GPU (``--device cuda``): a full HuBERT Base training step (masking, logits, cross-entropy +
feature penalty, backward, fused AdamW) in bf16 autocast, LayerDrop 0 so every step does the
same FLOPs. FLOPs of one step are counted by ``torch.utils.flop_counter``; the reference is the
audio-seconds/s the same step would reach at the measured bf16 matmul peak of the same card, so
the ratio is the model FLOPs utilisation (MFU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _report import device_label, log, report

from speechkit.interop.hf_hubert import to_transformers_model
from speechkit.models.hubert import HubertModel, hubert_base_config

SAMPLE_RATE = 16000


def _time(fn, iters: int, sync=lambda: None) -> list[float]:
    """Wall seconds of each of ``iters`` calls of ``fn`` (``sync`` before and after)."""
    out = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def build_pair(seed: int = 0) -> tuple[HubertModel, torch.nn.Module]:
    """speechkit HuBERT Base (dropout, LayerDrop, masking off) and its transformers twin."""
    torch.manual_seed(seed)
    cfg = hubert_base_config(
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        dropout_input=0.0,
        dropout_features=0.0,
        feature_grad_mult=1.0,
        mask_prob=0.0,
    )
    ours = HubertModel(cfg)
    return ours, to_transformers_model(ours)


def cpu_comparison(args) -> None:
    """Time speechkit vs transformers HuBERT Base on the CPU and report fwd+bwd audio-s/s."""
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, hf = build_pair()
    run = torch.compile(ours) if args.compile else ours
    x = torch.randn(args.cpu_batch, int(args.cpu_seconds * SAMPLE_RATE))

    def ours_fwd():
        with torch.no_grad():
            return run(x, mask=False, features_only=True)["x"]

    def hf_fwd():
        with torch.no_grad():
            return hf(x).last_hidden_state

    def ours_step():
        ours.zero_grad(set_to_none=True)
        run(x, mask=False, features_only=True)["x"].square().mean().backward()

    def hf_step():
        hf.zero_grad(set_to_none=True)
        hf(x).last_hidden_state.square().mean().backward()

    ours.eval()
    hf.eval()
    t0 = time.perf_counter()
    diff = (ours_fwd() - hf_fwd()).abs().max().item()
    log(
        f"CPU, {torch.get_num_threads()} threads, batch {args.cpu_batch} x "
        f"{args.cpu_seconds:g} s{', speechkit compiled' if args.compile else ''}; "
        f"max |speechkit - HF| = {diff:.2e} (first call {time.perf_counter() - t0:.1f} s)"
    )
    if not diff <= args.tolerance:
        raise SystemExit(
            f"hubert_step: speechkit and transformers outputs differ by {diff:.2e}; "
            f"expected at most {args.tolerance:g}"
        )
    medians = {}
    for name, a, b, mode in (
        ("forward", ours_fwd, hf_fwd, "eval"),
        ("forward+backward", ours_step, hf_step, "train"),
    ):
        ours.train(mode == "train")
        hf.train(mode == "train")
        a(), b()  # warm-up (and compilation of the training graph)
        ta, tb = [], []
        for _ in range(args.cpu_iters):  # interleaved
            ta += _time(a, 1)
            tb += _time(b, 1)
        ma, mb = statistics.median(ta), statistics.median(tb)
        medians[name] = ma, mb
        log(
            f"  {name:17s} speechkit {ma * 1e3:8.1f} ms   transformers {mb * 1e3:8.1f} ms   "
            f"ratio HF/speechkit = {mb / ma:.2f}   per call (ms): "
            f"{[round(t * 1e3) for t in ta]} vs {[round(t * 1e3) for t in tb]}"
        )
    audio = args.cpu_batch * args.cpu_seconds
    ma, mb = medians["forward+backward"]
    report(
        name="hubert_step_cpu",
        device=device_label("cpu"),
        config={
            "model": "HuBERT Base, dropout/LayerDrop/masking off",
            "batch": args.cpu_batch,
            "seconds": args.cpu_seconds,
            "step": "forward+backward of mean squared features",
            "compile": args.compile,
            "iters": args.cpu_iters,
            "max_abs_diff": float(f"{diff:.3g}"),
        },
        figure=audio / ma,
        unit="audio-s/s, median (higher is better)",
        reference="transformers.HubertModel eager, same weights, same process",
        reference_figure=audio / mb,
    )


def bf16_matmul_peak(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 matmul throughput (FLOP/s) of an n x n x n product."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t)


def gpu_throughput(args) -> None:
    """Time a bf16 HuBERT Base training step on the GPU and report audio-s/s and MFU."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cuda")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = hubert_base_config(encoder_layerdrop=0.0, num_classes=[504])
    model = HubertModel(cfg).to(device).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=True
    )
    n = int(args.seconds * SAMPLE_RATE)
    source = torch.randn(args.batch, n, device=device)
    frames = model.feature_extractor.output_lengths(n)
    labels = torch.randint(4, 504, (args.batch, frames), device=device)
    padding = torch.zeros(args.batch, n, dtype=torch.bool, device=device)
    gen = torch.Generator(device=device).manual_seed(1)
    fwd = torch.compile(model) if args.compile else model

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fwd(source, padding, target_list=[labels], generator=gen)
        logits = out["logit_m_list"][0]
        sample_size = logits.size(0)
        loss = F.cross_entropy(
            logits, logits.new_zeros(sample_size, dtype=torch.long), reduction="sum"
        )
        loss = loss + 10.0 * out["features_pen"] * sample_size
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    t = statistics.median(_time(step, args.gpu_iters, torch.cuda.synchronize))
    peak = bf16_matmul_peak(device)
    audio = args.batch * args.seconds
    log(
        f"GPU {torch.cuda.get_device_name(device)}: HuBERT Base training step, bf16 autocast, "
        f"batch {args.batch} x {args.seconds:g} s{' (torch.compile)' if args.compile else ''}\n"
        f"  step {t * 1e3:.1f} ms   {audio / t:.0f} audio-s/s   peak memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB\n"
        f"  model FLOPs/step {flops / 1e12:.2f} TFLOP   achieved {flops / t / 1e12:.1f} TFLOP/s   "
        f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s   MFU {flops / t / peak:.1%}"
    )
    report(
        name="hubert_step_gpu",
        device=device_label("cuda"),
        config={
            "model": "HuBERT Base, LayerDrop 0, 504 classes",
            "batch": args.batch,
            "seconds": args.seconds,
            "step": "bf16 autocast fwd + CE + feature penalty + bwd + fused AdamW",
            "compile": args.compile,
            "iters": args.gpu_iters,
            "tflop_per_step": round(flops / 1e12, 3),
            "peak_tflops_bf16_matmul": round(peak / 1e12, 1),
        },
        figure=audio / t,
        unit="audio-s/s per GPU, median step (higher is better)",
        reference="audio-s/s at the measured bf16 matmul peak (ratio = MFU)",
        reference_figure=audio * peak / flops,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the speechkit model")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |speechkit - HF| (CPU)")
    p.add_argument("--cpu-batch", type=int, default=2)
    p.add_argument("--cpu-seconds", type=float, default=4.0)
    p.add_argument("--cpu-iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch", type=int, default=8, help="GPU batch size")
    p.add_argument("--seconds", type=float, default=10.0, help="GPU seconds per utterance")
    p.add_argument("--gpu-iters", type=int, default=20)
    p.add_argument(
        "--quick", action="store_true", help="CPU 1 x 1 s, 2 iters; GPU 2 x 2 s, 5 iters"
    )
    args = p.parse_args()
    if args.quick:
        args.cpu_batch, args.cpu_seconds, args.cpu_iters = 1, 1.0, 2
        args.batch, args.seconds, args.gpu_iters = 2, 2.0, 5
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("hubert_step: --device cuda but torch.cuda.is_available() is False")
        gpu_throughput(args)
    else:
        cpu_comparison(args)


if __name__ == "__main__":
    main()
