"""HuBERT Base speed: speechkit vs Hugging Face ``transformers.HubertModel``, and GPU throughput.

CPU part (always): forward and forward+backward time of HuBERT Base on a batch of 2 x 4 s of
16 kHz audio, speechkit's ``HubertModel`` vs ``transformers.HubertModel`` holding the same
weights, in the same process. Dropout, LayerDrop and masking are off in both (so both do the
same arithmetic), the conv feature extractor gets gradients in both (feature_grad_mult=1).
Prints the median times and the ratio HF / speechkit (> 1: speechkit is faster).

GPU part (``--device cuda``, or automatically when a GPU is present): a full HuBERT Base
training step (masking, logits, cross-entropy + feature penalty, backward, AdamW) in bf16
autocast; prints audio-seconds per second per GPU and model FLOPs utilisation (FLOPs of one
step counted by ``torch.utils.flop_counter`` / step time, against the measured bf16 matmul
peak of the same GPU). LayerDrop is 0 there so every step does the same FLOPs.

Usage::

    python benchmarks/hubert_step.py                 # CPU comparison (+ GPU if available)
    python benchmarks/hubert_step.py --skip-cpu --device cuda --batch 8 --seconds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechkit.checkpoints.hf_hubert import to_transformers_model  # noqa: E402
from speechkit.models.hubert import HubertModel, hubert_base_config  # noqa: E402


def _time(fn, iters: int, sync=lambda: None) -> list[float]:
    out = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def cpu_comparison(
    batch: int, seconds: float, iters: int, threads: int | None, verbose: bool = False
) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = hubert_base_config(
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        dropout_input=0.0,
        feature_grad_mult=1.0,
        mask_prob=0.0,
    )
    ours = HubertModel(cfg)
    hf = to_transformers_model(ours)
    x = torch.randn(batch, int(seconds * 16000))

    def ours_fwd():
        with torch.no_grad():
            return ours(x, mask=False, features_only=True)["x"]

    def hf_fwd():
        with torch.no_grad():
            return hf(x).last_hidden_state

    def ours_step():
        ours.zero_grad(set_to_none=True)
        ours(x, mask=False, features_only=True)["x"].square().mean().backward()

    def hf_step():
        hf.zero_grad(set_to_none=True)
        hf(x).last_hidden_state.square().mean().backward()

    ours.eval()
    hf.eval()
    diff = (ours_fwd() - hf_fwd()).abs().max().item()
    print(
        f"CPU, {torch.get_num_threads()} threads, batch {batch} x {seconds:g} s; "
        f"max |speechkit - HF| = {diff:.2e}"
    )
    for name, a, b, mode in (
        ("forward", ours_fwd, hf_fwd, "eval"),
        ("forward+backward", ours_step, hf_step, "train"),
    ):
        ours.train(mode == "train")
        hf.train(mode == "train")
        a(), b()  # warm-up
        ta, tb = [], []
        for _ in range(iters):  # interleave so that machine load affects both alike
            ta += _time(a, 1)
            tb += _time(b, 1)
        ma, mb = statistics.median(ta), statistics.median(tb)
        if verbose:
            print("   ", [round(t * 1e3) for t in ta], [round(t * 1e3) for t in tb])
        print(
            f"  {name:17s} speechkit {ma * 1e3:8.1f} ms   transformers {mb * 1e3:8.1f} ms   "
            f"ratio HF/speechkit = {mb / ma:.2f}"
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


def gpu_throughput(batch: int, seconds: float, iters: int, compile_model: bool) -> None:
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
    n = int(seconds * 16000)
    source = torch.randn(batch, n, device=device)
    frames = model.feature_extractor.output_lengths(n)
    labels = torch.randint(4, 504, (batch, frames), device=device)
    padding = torch.zeros(batch, n, dtype=torch.bool, device=device)
    gen = torch.Generator(device=device).manual_seed(1)
    fwd = torch.compile(model) if compile_model else model

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
    times = _time(step, iters, torch.cuda.synchronize)
    t = statistics.median(times)
    peak = bf16_matmul_peak(device)
    name = torch.cuda.get_device_name(device)
    print(
        f"GPU {name}: HuBERT Base training step, bf16 autocast, batch {batch} x {seconds:g} s"
        f"{' (torch.compile)' if compile_model else ''}"
    )
    print(
        f"  step {t * 1e3:.1f} ms   {batch * seconds / t:.0f} audio-s/s per GPU   "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )
    print(
        f"  model FLOPs/step {flops / 1e12:.2f} TFLOP   achieved {flops / t / 1e12:.1f} TFLOP/s   "
        f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s   MFU {flops / t / peak:.1%}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="cuda: also run the GPU part (default: when a GPU is available)",
    )
    p.add_argument("--skip-cpu", action="store_true", help="skip the CPU comparison")
    p.add_argument("--cpu-iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch", type=int, default=8, help="GPU batch size")
    p.add_argument("--seconds", type=float, default=10.0, help="GPU seconds per utterance")
    p.add_argument("--gpu-iters", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--verbose", action="store_true", help="print every CPU timing")
    args = p.parse_args()
    if not args.skip_cpu:
        cpu_comparison(2, 4.0, args.cpu_iters, args.threads, args.verbose)
    use_gpu = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    if use_gpu:
        gpu_throughput(args.batch, args.seconds, args.gpu_iters, args.compile)
    elif args.device is None:
        print("no GPU: GPU throughput / MFU part skipped")


if __name__ == "__main__":
    main()
