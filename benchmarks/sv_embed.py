"""Speaker-embedding speed: CPU real-time factor of extraction, and training throughput.

1. ``--part rtf`` (default), CPU: real-time factor (RTF = seconds of compute per second of
   audio; < 1 is faster than real time) of ``model(waveform)`` in eval mode under
   ``torch.no_grad`` for every speaker model, on ``--seconds`` long utterances at batch 1 and
   batch 8 (fastest of ``--repeats`` runs after one warm-up run). JSON line: the RTF of the
   first of ``--models`` at the largest of ``--batches``, against real time (RTF 1), so the
   ratio is the RTF itself (lower is better).
2. ``--part train``: training samples/s of ``resnet_se34l`` on ``--device`` (default cuda when
   available) at ``--train-batch`` (default 200) 2 s crops (32,240 samples = 200 frames,
   voxceleb_trainer's crop), forward + backward of a mean loss + SGD step, bf16 autocast vs
   fp32. JSON line: bf16 samples/s vs fp32 samples/s (ratio > 1: bf16 is faster).

Run from the repository root::

    .venv/bin/python benchmarks/sv_embed.py [--quick]          # CPU RTF table
    .venv/bin/python benchmarks/sv_embed.py --models resnet_se34l ecapa_tdnn_c512 --repeats 5
    .venv/bin/python benchmarks/sv_embed.py --part train --device cpu --train-batch 8 \\
        --train-steps 2
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import device_label, log, report

import speechkit.models.ecapa_tdnn  # noqa: F401  (registers the models)
import speechkit.models.rawnet3  # noqa: F401
import speechkit.models.resnet_se  # noqa: F401
import speechkit.models.vggvox  # noqa: F401
from speechkit.registry import MODEL_REGISTRY

SAMPLE_RATE = 16000
CROP_SAMPLES = 200 * 160 + 240  # 2 s training crop of voxceleb_trainer (200 frames)

# label -> model config
MODELS: dict[str, dict] = {
    "resnet_se34l": {"_name": "resnet_se34l"},
    "resnet_se34v2": {"_name": "resnet_se34v2"},
    "vggvox40": {"_name": "vggvox40"},
    "rawnet3": {"_name": "rawnet3"},
    "ecapa_tdnn_c512": {"_name": "ecapa_tdnn", "channels": 512},
    "ecapa_tdnn_c1024": {"_name": "ecapa_tdnn", "channels": 1024},
}


def _best_seconds(fn, repeats: int, sync=lambda: None) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (robust to other load on the host)."""
    fn()  # warm-up (allocations, oneDNN/cuDNN kernel selection)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_rtf(models: list[str], seconds: float, batches: list[int], repeats: int) -> dict:
    """Log the CPU real-time-factor table; returns {(model, batch): RTF}."""
    log(
        f"CPU embedding extraction: {seconds:g} s utterances, torch threads "
        f"{torch.get_num_threads()}, best of {repeats} (RTF = compute s / audio s)"
    )
    header = f"{'model':<18} {'params':>8} " + " ".join(f"{'RTF b' + str(b):>10}" for b in batches)
    header += " " + " ".join(f"{'x RT b' + str(b):>9}" for b in batches)
    log(header)
    log("-" * len(header))
    num_samples = int(seconds * SAMPLE_RATE)
    table = {}
    for label in models:
        torch.manual_seed(0)
        model = MODEL_REGISTRY.build(MODELS[label]).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rtfs = []
        for batch in batches:
            wav = 0.1 * torch.randn(batch, num_samples)
            with torch.no_grad():
                elapsed = _best_seconds(lambda m=model, w=wav: m(w), repeats)
            rtfs.append(elapsed / (batch * seconds))
            table[label, batch] = rtfs[-1]
        row = f"{label:<18} {params:>7.2f}M " + " ".join(f"{r:>10.4f}" for r in rtfs)
        row += " " + " ".join(f"{1 / r:>8.1f}x" for r in rtfs)
        log(row)
    return table


def train_throughput(device: str, batch: int, steps: int) -> dict[str, float]:
    """Log and return resnet_se34l training samples/s in fp32 and under bf16 autocast."""
    dev = torch.device(device)
    is_cuda = dev.type == "cuda"
    if is_cuda:
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if is_cuda else (lambda: None)
    log(
        f"\nresnet_se34l training on {device}"
        f"{' (' + torch.cuda.get_device_name(dev) + ')' if is_cuda else ''}: batch {batch} x "
        f"{CROP_SAMPLES} samples, forward + backward + SGD step, best of {steps} steps"
    )
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = MODEL_REGISTRY.build({"_name": "resnet_se34l"}).to(dev).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        wav = 0.1 * torch.randn(batch, CROP_SAMPLES, device=dev)

        def step(model=model, optimizer=optimizer, wav=wav, precision=precision):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(wav).float().square().mean()
            loss.backward()
            optimizer.step()

        if is_cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        elapsed = _best_seconds(step, steps, sync)
        peak = (
            f", peak memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB"
            if is_cuda
            else ""
        )
        results[precision] = batch / elapsed
        log(
            f"  {precision}: {results[precision]:9.1f} samples/s  ({elapsed * 1e3:7.1f} ms/step"
            f"{peak})"
        )
    log(f"  bf16 / fp32 speed-up: {results['bf16'] / results['fp32']:.2f}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["rtf", "train"], default="rtf")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length (s)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--device", default=None, help="--part train device (default: cuda if available)"
    )
    parser.add_argument("--train-batch", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="rtf: resnet_se34l, 2 s, batch 1, best of 2; train: batch 8, best of 2 steps",
    )
    args = parser.parse_args()
    if args.quick:
        args.models, args.seconds, args.batches, args.repeats = ["resnet_se34l"], 2.0, [1], 2
        args.train_batch, args.train_steps = 8, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "rtf":
        table = cpu_rtf(args.models, args.seconds, args.batches, args.repeats)
        model, batch = args.models[0], max(args.batches)
        report(
            name="sv_embed_rtf",
            device=device_label("cpu"),
            config={
                "model": model,
                "batch": batch,
                "seconds": args.seconds,
                "repeats": args.repeats,
                "mode": "eval, no_grad",
            },
            figure=table[model, batch],
            unit="real-time factor, compute s / audio s, best of repeats (lower is better)",
            reference="real time",
            reference_figure=1.0,
        )
        return
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = train_throughput(device, args.train_batch, args.train_steps)
    report(
        name="sv_embed_train",
        device=device_label(device),
        config={
            "model": "resnet_se34l",
            "batch": args.train_batch,
            "crop_samples": CROP_SAMPLES,
            "steps": args.train_steps,
            "step": "forward + mean-square loss + backward + SGD",
        },
        figure=results["bf16"],
        unit="training samples/s, best of steps (higher is better)",
        reference="the same step in fp32",
        reference_figure=results["fp32"],
    )


if __name__ == "__main__":
    main()
