"""Reference timing of the bench-small shape in PyTorch (see bench/README.md).

Not part of CI. Needs Debian's python3-torch (PyTorch 1.13 on OpenBLAS):

    apt-get install python3-torch
    /usr/bin/python3 bench/pytorch_bench.py [--threads 1] [--seconds 5] [--shape small|large]
        [--device cpu|cuda]

`--shape large` is the shape of `deno task bench --shape large`; `--device cuda` runs on a
GPU (PyTorch >= 2.0, timings synchronised with the device; bench/gpu.sh uses it).

Prints one JSON line with train_tokens_per_s and decode_tokens_per_s (plus the same per
CPU-second of this process), measured the way `deno task bench` measures the transformer
plugin (bench/model.ts): pre-LN encoder-decoder, d_model 256, 4 heads, FFN 1024, 3+3
layers, shared vocabulary 8000 (tied embeddings and output projection), batch 32, source
and target length 24, Adam, no dropout, 2 warm-up steps, then `--seconds` of full steps
counting 32 x 24 target tokens each; greedy decoding of batch 64 for 24 steps with a
per-layer key/value cache, one warm-up run, then `--seconds` of runs counting 64 x 24
tokens each (the encoder pass included).

Threads: `--threads N` limits PyTorch's own pool (torch.set_num_threads) AND OpenBLAS's.
torch.set_num_threads alone does not reach Debian's OpenBLAS, which then runs every
matrix product on all cores; the variables below must be set before torch loads it.
`blas_threads` in the output is what OpenBLAS itself reports.
"""

import argparse
import ctypes
import json
import math
import os
import time

_parser = argparse.ArgumentParser()
_parser.add_argument("--threads", type=int, default=1, help="threads (0 = every core)")
_parser.add_argument("--seconds", type=float, default=5.0, help="seconds per phase")
_parser.add_argument("--shape", choices=("small", "large"), default="small",
                     help="small: bench-small; large: d_model 512, 8 heads, FFN 2048, 6+6 "
                     "layers, training batch 64 (deno task bench --shape large)")
_parser.add_argument("--device", default="cpu",
                     help="torch device, e.g. cuda (needs PyTorch >= 2.0 for set_default_device)")
ARGS = _parser.parse_args()
if ARGS.threads > 0:
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(ARGS.threads)

import torch  # noqa: E402  (after the thread variables)
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

if ARGS.shape == "large":
    D, HEADS, FFN, LAYERS, VOCAB = 512, 8, 2048, 6, 8000
    BATCH, SRC_LEN, TGT_LEN = 64, 24, 24
else:
    D, HEADS, FFN, LAYERS, VOCAB = 256, 4, 1024, 3, 8000
    BATCH, SRC_LEN, TGT_LEN = 32, 24, 24
DEC_BATCH, DEC_STEPS = 64, 24


class Attention(nn.Module):
    def __init__(self, cross):
        super().__init__()
        self.cross = cross
        if cross:
            self.q = nn.Linear(D, D)
            self.kv = nn.Linear(D, 2 * D)
        else:
            self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)

    def heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, HEADS, D // HEADS).transpose(1, 2)

    def forward(self, x, memory=None, mask=None, cache=None):
        if self.cross:
            q = self.heads(self.q(x))
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = (self.heads(t) for t in self.kv(memory).chunk(2, dim=-1))
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            q, k, v = (self.heads(t) for t in self.qkv(x).chunk(3, dim=-1))
            if cache is not None:
                if "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)
        if mask is not None:
            scores = scores + mask
        y = F.softmax(scores, dim=-1) @ v
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, D))


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.att = Attention(False)
        self.ff = nn.Sequential(nn.Linear(D, FFN), nn.ReLU(), nn.Linear(FFN, D))

    def forward(self, x, mask):
        x = x + self.att(self.n1(x), mask=mask)
        return x + self.ff(self.n2(x))


class DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.att = Attention(False)
        self.cross = Attention(True)
        self.ff = nn.Sequential(nn.Linear(D, FFN), nn.ReLU(), nn.Linear(FFN, D))

    def forward(self, x, memory, self_mask, cross_mask, cache=None):
        x = x + self.att(self.n1(x), mask=self_mask, cache=None if cache is None else cache[0])
        x = x + self.cross(self.n2(x), memory, mask=cross_mask, cache=None if cache is None else cache[1])
        return x + self.ff(self.n3(x))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.enc = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))
        self.dec = nn.ModuleList(DecoderLayer() for _ in range(LAYERS))
        self.enc_norm, self.dec_norm = nn.LayerNorm(D), nn.LayerNorm(D)
        pos = torch.arange(256).unsqueeze(1)
        div = torch.exp(torch.arange(0, D, 2) * (-math.log(10000.0) / D))
        pe = torch.zeros(256, D)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def embed(self, ids, offset=0):
        return self.emb(ids) * math.sqrt(D) + self.pe[offset:offset + ids.shape[1]]

    def encode(self, src):
        pad = (src == 0).float()[:, None, None, :] * -1e9
        x = self.embed(src)
        for layer in self.enc:
            x = layer(x, pad)
        return self.enc_norm(x), pad

    def forward(self, src, tgt_in):
        memory, pad = self.encode(src)
        t = tgt_in.shape[1]
        causal = torch.triu(torch.full((t, t), -1e9), diagonal=1)
        x = self.embed(tgt_in)
        for layer in self.dec:
            x = layer(x, memory, causal, pad)
        return self.dec_norm(x) @ self.emb.weight.t()

    @torch.no_grad()
    def greedy(self, src, steps):
        memory, pad = self.encode(src)
        caches = [({}, {}) for _ in self.dec]
        token = torch.ones(src.shape[0], 1, dtype=torch.long)
        out = []
        for step in range(steps):
            x = self.embed(token, step)
            for layer, cache in zip(self.dec, caches):
                x = layer(x, memory, None, pad, cache)
            logits = self.dec_norm(x[:, -1]) @ self.emb.weight.t()
            token = logits.argmax(-1, keepdim=True)
            out.append(token)
        return torch.cat(out, 1)


def blas_threads():
    """Threads OpenBLAS reports, from the copy this process loaded (None if not found)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path).openblas_get_num_threads()
        except (OSError, AttributeError):
            continue
    return None


def sync():
    """Waits for queued GPU work, so wall-clock timings cover it (nothing to do on the CPU)."""
    if ARGS.device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    if ARGS.threads > 0:
        torch.set_num_threads(ARGS.threads)
    if ARGS.device != "cpu":
        # Every tensor below (parameters, batches, masks, caches) is created on the device.
        torch.set_default_device(ARGS.device)
    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    src = torch.randint(4, VOCAB, (BATCH, SRC_LEN))
    tgt = torch.randint(4, VOCAB, (BATCH, TGT_LEN + 1))

    def step():
        opt.zero_grad()
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1))
        loss.backward()
        # The framework's training steps clip the global gradient norm (at 1 here).
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(2):
        step()
    sync()
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while steps < 3 or time.perf_counter() - start < ARGS.seconds:
        step()
        steps += 1
    sync()
    train_wall = time.perf_counter() - start
    train_cpu = time.process_time() - cpu

    model.eval()
    dsrc = torch.randint(4, VOCAB, (DEC_BATCH, SRC_LEN))
    model.greedy(dsrc, DEC_STEPS)
    sync()
    runs, start, cpu = 0, time.perf_counter(), time.process_time()
    while runs < 3 or time.perf_counter() - start < ARGS.seconds:
        model.greedy(dsrc, DEC_STEPS)
        runs += 1
    sync()
    decode_wall = time.perf_counter() - start
    decode_cpu = time.process_time() - cpu
    train_tokens = steps * BATCH * TGT_LEN
    decode_tokens = runs * DEC_BATCH * DEC_STEPS
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "device": ARGS.device,
        "shape": ARGS.shape,
        "threads": torch.get_num_threads(),
        "blas_threads": blas_threads(),
        "train_tokens_per_s": round(train_tokens / train_wall),
        "decode_tokens_per_s": round(decode_tokens / decode_wall),
        "train_tokens_per_cpu_s": round(train_tokens / train_cpu),
        "decode_tokens_per_cpu_s": round(decode_tokens / decode_cpu),
        "decode_tokens_per_run": DEC_BATCH * DEC_STEPS,
        "train_step_ms": round(1000 * train_wall / steps, 1),
        "decode_batch_ms": round(1000 * decode_wall / runs, 1),
        "train_steps": steps,
        "decode_runs": runs,
    }))


if __name__ == "__main__":
    main()
