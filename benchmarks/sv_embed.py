"""Speaker-embedding speed: CPU real-time factor of extraction, and GPU training throughput.

1. CPU: real-time factor (RTF = seconds of compute per second of audio; < 1 is faster than real
   time) of ``model(waveform)`` in eval mode under ``torch.no_grad`` for every speaker model, on
   ``--seconds`` long utterances at batch 1 and batch 8 (fastest of ``--repeats`` runs after one
   warm-up run).
2. GPU (when CUDA is available, or ``--train-device`` is given): training samples/s of
   ``resnet_se34l`` at ``--train-batch`` (default 200) 2 s crops (32,240 samples = 200 frames,
   voxceleb_trainer's crop), forward + backward of a mean loss + SGD step, fp32 vs bf16 autocast.

Usage::

    python benchmarks/sv_embed.py                       # CPU table (+ GPU part if available)
    python benchmarks/sv_embed.py --models resnet_se34l ecapa_tdnn_c512 --repeats 5
    python benchmarks/sv_embed.py --skip-cpu --train-device cpu --train-batch 8 --train-steps 2
"""

from __future__ import annotations

import argparse
import time

import torch

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


def cpu_rtf(models: list[str], seconds: float, batches: list[int], repeats: int) -> None:
    """Print the CPU real-time-factor table."""
    print(
        f"CPU embedding extraction: {seconds:g} s utterances, torch threads "
        f"{torch.get_num_threads()}, best of {repeats} (RTF = compute s / audio s)"
    )
    header = f"{'model':<18} {'params':>8} " + " ".join(f"{'RTF b' + str(b):>10}" for b in batches)
    header += " " + " ".join(f"{'x RT b' + str(b):>9}" for b in batches)
    print(header)
    print("-" * len(header))
    num_samples = int(seconds * SAMPLE_RATE)
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
        row = f"{label:<18} {params:>7.2f}M " + " ".join(f"{r:>10.4f}" for r in rtfs)
        row += " " + " ".join(f"{1 / r:>8.1f}x" for r in rtfs)
        print(row, flush=True)


def train_throughput(device: str, batch: int, steps: int) -> None:
    """Print resnet_se34l training samples/s in fp32 and under bf16 autocast."""
    dev = torch.device(device)
    is_cuda = dev.type == "cuda"
    if is_cuda:
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if is_cuda else (lambda: None)
    print(
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
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if is_cuda else float("nan")
        results[precision] = batch / elapsed
        print(
            f"  {precision}: {results[precision]:9.1f} samples/s  ({elapsed * 1e3:7.1f} ms/step, "
            f"peak memory {peak:.2f} GiB)",
            flush=True,
        )
    print(f"  bf16 / fp32 speed-up: {results['bf16'] / results['fp32']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length (s)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument(
        "--train-device",
        default=None,
        help="device for the training benchmark (default: cuda if available)",
    )
    parser.add_argument("--train-batch", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_cpu:
        cpu_rtf(args.models, args.seconds, args.batches, args.repeats)
    device = args.train_device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("\nno CUDA device: training throughput (fp32 vs bf16) skipped")
    else:
        train_throughput(device, args.train_batch, args.train_steps)


if __name__ == "__main__":
    main()
