"""Speaker-verification input pipeline throughput, and the CPU train step it has to feed.

Measures utterances per second and CPU milliseconds per utterance (all processes, so robust to
other jobs on the machine) through decode + random crop, then + augmentation (noise / babble /
reverb from the shared lists, as voxceleb_trainer's ``AugmentWAV`` in ``DatasetLoader.py``, then
+ speed perturbation) with a torch DataLoader over the real train list, for several worker
counts; the same with ``task.augmentation.on_device=true`` (the workers draw, decode and crop:
the speech crop, the drawn noise segments and RIRs; ``speechkit.data.augment_draws``; the crops
sent as 16-bit PCM, as the task does); the CPU cost of rendering those draws batched
(``speechkit.data.device_augment``) on this CPU, as the training device would; plus the
forward, backward and Adam time of ``resnet_se34l`` on one batch of the same shape. Run from the
repository root::

    .venv/bin/python benchmarks/sv_dataloader.py [--speakers 32] [--per-speaker 2] \\
        [--max-frames 200] [--batches 24] [--workers 1 2] [--repeats 3] [--data DIR] [--quick]

JSON line: steady-state CPU ms per utterance of the data pipeline (all processes) with on-device
augmentation and the noise bank (``task.augmentation.noise_bank``: the workers decode and crop
the speech, draw, and send the noise segments as references) vs decode + crop + augment in the
workers (today's path), at the largest ``--workers``; goal ratio <= 0.25. Steady state: the
extra CPU of a pass over all batches over a pass over the first half, per extra utterance (a
long training's cost once the workers run and their caches are warm), median over ``--repeats``
pairs of passes; the cold figures of one pass are in ``config`` too. Side results: decode + crop
alone, on-device augmentation without the bank (segments decoded and sent), both paths with
speed perturbation, and the on-device rendering cost per utterance on this CPU (not part of the
figure: on a GPU it runs on the GPU).

The shared train list has only 10 speakers, fewer than 32 per batch, so the benchmark's batches
are drawn with speaker repetition (each group is still one speaker's utterances); the data cost
per utterance does not depend on that.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from _report import device_label, log, report
from torch.utils.data import DataLoader

import speechkit.models.resnet_se  # noqa: F401  (registers resnet_se34l)
from speechkit.cli.paths import find_shared_data
from speechkit.data.augment import Augmenter, read_babble_list, read_noise_list, read_rir_list
from speechkit.data.augment_draws import AugmentDrawer
from speechkit.data.batch_buffer import float_audio
from speechkit.data.crop import frames_to_samples
from speechkit.data.device_augment import DeviceAugmenter
from speechkit.data.lists import read_train_list
from speechkit.data.noise_bank import NoiseBank
from speechkit.data.speaker_dataset import SpeakerTrainDataset
from speechkit.registry import MODEL_REGISTRY

TRAIN_LIST = "lists/librispeech_test_other_train_all.txt"


def make_batches(labels, speakers, per_speaker, count, seed=0):
    """``count`` batches of ``speakers`` groups, each ``per_speaker`` utterances of one speaker."""
    rng = np.random.default_rng(seed)
    by_speaker = {}
    for i, label in enumerate(labels):
        by_speaker.setdefault(label, []).append(i)
    keys = sorted(by_speaker)
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(speakers):
            utts = by_speaker[keys[int(rng.integers(len(keys)))]]
            batch.append([int(i) for i in rng.choice(utts, size=per_speaker, replace=False)])
        batches.append(batch)
    return batches


def cpu_seconds(workers_only: bool = False) -> float:
    """User + system CPU time of this process and its reaped children (DataLoader workers), or
    of the children alone."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    children = kids.ru_utime + kids.ru_stime
    return children if workers_only else own.ru_utime + own.ru_stime + children


def one_pass(dataset, batches, workers):
    """(utterances, seconds, CPU seconds of all processes, of the workers alone) of one pass of
    a fresh DataLoader (worker start-up and cold noise caches included)."""
    cpu0, kids0, start = cpu_seconds(), cpu_seconds(True), time.perf_counter()
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=dataset.collater, num_workers=workers
    )
    utterances = sum(b["audio"].shape[0] * b["audio"].shape[1] for b in loader)
    seconds = time.perf_counter() - start
    del loader  # the exhausted iterator has joined its workers: their CPU time is counted
    return utterances, seconds, cpu_seconds() - cpu0, cpu_seconds(True) - kids0


def time_loader(dataset, batches, workers, repeats):
    """Utterances per second and CPU ms per utterance (all processes: robust when other jobs
    share the CPU) of one pass over the first half of ``batches`` (cold: worker start-up and
    first decodes of the noise files included), and the steady-state CPU ms per utterance:
    the extra CPU of a pass over all ``batches`` divided by the extra utterances (what a long
    training pays per utterance once the workers run and their caches are warm), and the same
    for the worker processes alone. Medians over ``repeats`` such pairs of passes."""
    half = max(len(batches) // 2, 1)
    rates, cold, steady, steady_workers = [], [], [], []
    for _ in range(repeats):
        utts, seconds, cpu, kids = one_pass(dataset, batches[:half], workers)
        utts_all, _, cpu_all, kids_all = one_pass(dataset, batches, workers)
        rates.append(utts / seconds)
        cold.append(cpu * 1e3 / utts)
        steady.append((cpu_all - cpu) * 1e3 / max(utts_all - utts, 1))
        steady_workers.append((kids_all - kids) * 1e3 / max(utts_all - utts, 1))
    return tuple(float(np.median(x)) for x in (rates, cold, steady, steady_workers))


def time_device_augment(dataset, batches, workers, bank=None):
    """CPU milliseconds per utterance of ``DeviceAugmenter`` on the loaded batches (this
    process's CPU time around the call only; soxr kernels measured before timing)."""
    device = DeviceAugmenter(noise_bank=bank)
    for factor in device_speeds(dataset):
        device.kernel(factor, torch.device("cpu"))
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=dataset.collater, num_workers=workers
    )
    cpu, utterances = 0.0, 0
    for batch in loader:
        c0 = time.process_time()
        device(float_audio(batch["audio"]), batch["augment"])  # 16-bit PCM: as the task does
        cpu += time.process_time() - c0
        utterances += batch["audio"].shape[0] * batch["audio"].shape[1]
    return cpu * 1e3 / utterances


def device_speeds(dataset):
    aug = dataset.augment.augmenter
    return [s for s in aug.speeds if s != 1.0] if aug.speed_perturb else []


def time_train_step(batch_utts, samples, steps=3):
    """(wall, CPU) median seconds per forward + backward + Adam step of resnet_se34l on
    (batch_utts, samples) random audio, over ``steps`` steps after one warm-up step."""
    model = MODEL_REGISTRY.build({"_name": "resnet_se34l"})
    classifier = torch.nn.Linear(model.embed_dim, 10)
    params = list(model.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    audio = torch.randn(batch_utts, samples) * 0.05
    target = torch.randint(0, 10, (batch_utts,))
    times, cpu = [], []
    for step in range(steps + 1):
        t0, c0 = time.perf_counter(), cpu_seconds()
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(classifier(model(audio)), target)
        loss.backward()
        optimizer.step()
        if step > 0:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds() - c0)
    return float(np.median(times)), float(np.median(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data (default: found)")
    parser.add_argument("--speakers", type=int, default=32)
    parser.add_argument("--per-speaker", type=int, default=2)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument(
        "--repeats", type=int, default=3, help="pairs of passes per pipeline (medians)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 x 2 utterances, 3 batches, 1 worker, 1 step"
    )
    args = parser.parse_args()
    if args.quick:
        args.speakers, args.batches, args.workers, args.model_steps = 8, 3, [1], 1
        args.repeats = 1

    data = find_shared_data(TRAIN_LIST, args.data)
    if data is None:
        raise SystemExit(
            f"sv_dataloader: {args.data or 'shared data'}: no {TRAIN_LIST}; expected the shared "
            "test data (--data DIR or $SPEECHKIT_SHARED_DATA)"
        )
    items = read_train_list(data / TRAIN_LIST, data)
    lists = (
        read_noise_list(data / "lists/noise_list.txt", data),
        read_rir_list(data / "lists/rir_list.txt", data),
        read_babble_list(data / "lists/cohort_list.txt", data),
    )
    augment = Augmenter(*lists)
    speed = Augmenter(*lists, speed_perturb=True)
    samples = frames_to_samples(args.max_frames)
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch "
        f"{args.speakers} speakers x {args.per_speaker} utterances x {samples} samples; "
        f"{args.batches} batches; augment choices {augment.choices}"
    )

    def dataset(aug, partial=True):
        return SpeakerTrainDataset(
            items,
            max_frames=args.max_frames,
            n_per_speaker=args.per_speaker,
            augment=aug,
            seed=1,
            partial_read=partial,
            pcm16=isinstance(aug, AugmentDrawer),  # as the task sets it for on-device
        )

    labels = dataset(None).labels
    batches = make_batches(labels, args.speakers, args.per_speaker, args.batches)
    crop, augmented = "decode + crop (partial read)", "decode + crop + augment"
    drawn = "decode + crop + draws (on device)"
    speed_name, speed_drawn = "decode + crop + speed + augment", "+ speed draws (on device)"
    banked = "+ noise bank on the device"
    bank = NoiseBank.from_augmenter(augment)  # noise, babble and RIR files
    configs = [
        (crop, None, True),
        ("decode + crop (whole-file read)", None, False),
        (augmented, augment, True),
        (drawn, AugmentDrawer(augment), True),
        (banked, AugmentDrawer(augment, bank.layout), True),
        (speed_name, speed, True),
        (speed_drawn, AugmentDrawer(speed), True),
    ]
    results = {}
    load_before = os.getloadavg()[0]
    log(f"load average before: {load_before:.2f} (other jobs on this machine)")
    log(
        f"\n{'pipeline':34s} {'workers':>7s} {'utt/s':>8s} {'CPU ms/utt':>11s} "
        f"{'steady CPU ms/utt':>18s} {'of which workers':>15s}"
    )
    for name, aug, partial in configs:
        for workers in args.workers:
            rate, cpu_ms, steady_ms, worker_ms = time_loader(
                dataset(aug, partial), batches, workers, args.repeats
            )
            results[name, workers] = rate, cpu_ms, steady_ms, worker_ms
            log(
                f"{name:34s} {workers:7d} {rate:8.1f} {cpu_ms:11.2f} {steady_ms:18.2f} "
                f"{worker_ms:15.2f}"
            )

    workers = max(args.workers)
    device_batches = batches[: min(len(batches), 4)]
    device_ms = time_device_augment(dataset(AugmentDrawer(augment)), device_batches, workers)
    device_speed_ms = time_device_augment(dataset(AugmentDrawer(speed)), device_batches, workers)
    device_bank_ms = time_device_augment(
        dataset(AugmentDrawer(augment, bank.layout)), device_batches, workers, bank
    )
    log(
        f"\non-device augmentation rendered on this CPU ({len(device_batches)} batches): "
        f"{device_ms:.2f} CPU ms/utt, with speed {device_speed_ms:.2f}, cutting the noise "
        f"from the bank {device_bank_ms:.2f}"
    )

    batch_utts = args.speakers * args.per_speaker
    step, step_cpu = time_train_step(batch_utts, samples, args.model_steps)
    model_rate, model_cpu_ms = batch_utts / step, step_cpu * 1e3 / batch_utts
    log(
        f"resnet_se34l CPU train step (forward + backward + Adam), {batch_utts} x "
        f"{samples}: {step:.2f} s/step = {model_rate:.1f} utt/s, {model_cpu_ms:.1f} CPU ms/utt"
    )
    for workers_ in args.workers:
        rate, cpu_ms, _, _ = results[augmented, workers_]
        log(
            f"  augmented input with {workers_} worker(s): {rate / model_rate:.1f}x the "
            f"model's utt/s; {100 * cpu_ms / model_cpu_ms:.1f}% of its CPU time per utt"
        )
    load_after = os.getloadavg()[0]
    log(f"load average after: {load_after:.2f}")
    report(
        name="sv_dataloader",
        device=device_label("cpu"),
        config={
            "batch": f"{args.speakers} speakers x {args.per_speaker} utterances",
            "crop_samples": samples,
            "batches": args.batches,
            "workers": workers,
            "augment": list(augment.choices),
            "figure_utt_per_s": round(results[banked, workers][0], 1),
            "reference_utt_per_s": round(results[augmented, workers][0], 1),
            "cold_cpu_ms_per_utt": {
                name: round(results[name, workers][1], 3) for name, _, _ in configs
            },
            "steady_cpu_ms_per_utt": {
                name: round(results[name, workers][2], 3) for name, _, _ in configs
            },
            "steady_worker_cpu_ms_per_utt": {
                name: round(results[name, workers][3], 3) for name, _, _ in configs
            },
            "device_augment_cpu_ms_per_utt": round(device_ms, 3),
            "device_augment_speed_cpu_ms_per_utt": round(device_speed_ms, 3),
            "device_augment_bank_cpu_ms_per_utt": round(device_bank_ms, 3),
            "resnet_se34l_cpu_ms_per_utt": round(model_cpu_ms, 1),
            "load_average": [round(load_before, 2), round(load_after, 2)],
        },
        figure=results[banked, workers][2],
        unit="steady-state CPU ms per utterance, all processes (lower is better)",
        reference="worker-side decode + crop + augment (noise/babble/reverb), same batches",
        reference_figure=results[augmented, workers][2],
    )


if __name__ == "__main__":
    main()
