#!/usr/bin/env python3
"""PyTorch CPU reference for `flotilla bench train` (docs/threads.md, docs/benchmarks.md).

The same models, optimizer, batch size, synthetic data and method as core/engine/bench.ts, so the two rates can be
compared side by side on one machine:

- mlp: the 2NN of McMahan et al. 2017 (784-200-200-10, relu; 199,210 parameters);
- cnn: their CNN (conv 5x5x32 'same' relu, maxpool 2, conv 5x5x64 'same' relu, maxpool 2, dense 512 relu,
  dense 10; 1,663,370 parameters) on 28x28x1 inputs;
- plain SGD (lr 0.01) on softmax cross-entropy, mini-batches of B drawn from a seeded shuffle of 4,000 synthetic
  samples (uniform [0, 1) inputs, uniform labels over 10 classes);
- a warm-up of doubling runs (3, 6, 12, ... steps) for ~25% of the time budget, then 5 equal timed runs that fill
  the rest; the result is the median of their rates (samples/s). Each run's clock covers batch assembly, the steps
  and the loss read-back at its end (as Flotilla reads its metrics back once per run).

Usage: bench-pytorch.py --model cnn|mlp [--batch-size 10] [--threads 2] [--seconds 10] [--json]
Exit code 2 with a one-line message when torch is not installed (it is optional: Debian's python3-torch).
"""
import argparse
import json
import statistics
import sys
import time

REPS = 5
MAX_SAMPLES = 4000


def build(nn, model):
    if model == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 200),
            nn.ReLU(),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, 10),
        )
    if model == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(7 * 7 * 64, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )
    raise ValueError(f"unknown model '{model}' (expected mlp or cnn)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["mlp", "cnn"])
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.batch_size < 1 or a.threads < 1 or not a.seconds > 0:
        print("bench-pytorch: batch size, threads and seconds must be positive", file=sys.stderr)
        return 1
    try:
        import torch
        from torch import nn
    except ImportError:
        print(
            "bench-pytorch: E_BENCH_REFERENCE: PyTorch is not installed for this Python "
            f"({sys.executable}); install it (Debian: apt-get install python3-torch) to compare",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    bs = a.batch_size
    shape = (1, 28, 28) if a.model == "cnn" else (784,)
    n = max(bs, MAX_SAMPLES - MAX_SAMPLES % bs)
    g = torch.Generator().manual_seed(a.seed)
    x = torch.rand((n,) + shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    net = build(nn, a.model)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def run(samples):
        """Trains on `samples` samples (epochs over the first min(samples, n)); returns samples/s."""
        m = min(samples, n)
        epochs = max(1, round(samples / m))
        t0 = time.perf_counter()
        done = 0
        total = torch.zeros(())
        for _ in range(epochs):
            order = torch.randperm(m, generator=g)
            for s in range(0, m, bs):
                idx = order[s : s + bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x[idx]), y[idx])
                loss.backward()
                opt.step()
                total += loss.detach()
                done += len(idx)
        float(total)  # the read-back at the end of a run
        return done / (time.perf_counter() - t0)

    warm_end = time.perf_counter() + a.seconds * 0.25
    steps = 3
    rate = run(steps * bs)
    while True:
        left = warm_end - time.perf_counter()
        if left <= 0:
            break
        steps = max(1, min(2 * steps, round(left * rate / bs)))
        rate = run(steps * bs)
    rep_samples = max(bs, round(rate * a.seconds * 0.75 / REPS / bs) * bs)
    reps = [run(rep_samples) for _ in range(REPS)]
    out = {
        "model": a.model,
        "batchSize": bs,
        "params": params,
        "threads": torch.get_num_threads(),
        "samplesPerSecond": statistics.median(reps),
        "repetitions": reps,
        "torch": torch.__version__,
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(
            f"PyTorch {out['torch']} {a.model} B={bs} ({params:,} params, {out['threads']} threads): "
            f"{out['samplesPerSecond']:.1f} samples/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
