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
_parser.add_argument("--phases", action="store_true",
                     help="time the phases of deno task bench --phases instead (BC step, Grow "
                     "batch, PPO rollout + update at the LibreOffice model size)")
ARGS = _parser.parse_args()
if ARGS.threads > 0:
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(ARGS.threads)

import torch  # noqa: E402  (after the thread variables)
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

DROPOUT = 0.0
if ARGS.phases:
    # bench/phases.ts: the LibreOffice experiment's model (experiments/ppo_vs_rest.json).
    D, HEADS, FFN, LAYERS, VOCAB, DROPOUT = 128, 4, 512, 2, 4000, 0.1
    BATCH, SRC_LEN, TGT_LEN = 64, 16, 16
elif ARGS.shape == "large":
    D, HEADS, FFN, LAYERS, VOCAB = 512, 8, 2048, 6, 8000
    BATCH, SRC_LEN, TGT_LEN = 64, 24, 24
else:
    D, HEADS, FFN, LAYERS, VOCAB = 256, 4, 1024, 3, 8000
    BATCH, SRC_LEN, TGT_LEN = 32, 24, 24
DEC_BATCH, DEC_STEPS = 64, 24


def dropout():
    """Dropout on embeddings and sublayer outputs, as the transformer plugin (none at p 0)."""
    return nn.Dropout(DROPOUT) if DROPOUT > 0 else nn.Identity()


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
        self.drop = dropout()

    def forward(self, x, mask):
        x = x + self.drop(self.att(self.n1(x), mask=mask))
        return x + self.drop(self.ff(self.n2(x)))


class DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.att = Attention(False)
        self.cross = Attention(True)
        self.ff = nn.Sequential(nn.Linear(D, FFN), nn.ReLU(), nn.Linear(FFN, D))
        self.drop = dropout()

    def forward(self, x, memory, self_mask, cross_mask, cache=None):
        x = x + self.drop(self.att(self.n1(x), mask=self_mask, cache=None if cache is None else cache[0]))
        x = x + self.drop(self.cross(self.n2(x), memory, mask=cross_mask,
                                     cache=None if cache is None else cache[1]))
        return x + self.drop(self.ff(self.n3(x)))


class Model(nn.Module):
    def __init__(self, value_head=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.drop = dropout()
        self.value = nn.Linear(D, 1) if value_head else None
        self.enc = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))
        self.dec = nn.ModuleList(DecoderLayer() for _ in range(LAYERS))
        self.enc_norm, self.dec_norm = nn.LayerNorm(D), nn.LayerNorm(D)
        pos = torch.arange(256).unsqueeze(1)
        div = torch.exp(torch.arange(0, D, 2) * (-math.log(10000.0) / D))
        pe = torch.zeros(256, D)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def embed(self, ids, offset=0):
        return self.drop(self.emb(ids) * math.sqrt(D) + self.pe[offset:offset + ids.shape[1]])

    def encode(self, src):
        pad = (src == 0).float()[:, None, None, :] * -1e9
        x = self.embed(src)
        for layer in self.enc:
            x = layer(x, pad)
        return self.enc_norm(x), pad

    def states(self, src, tgt_in):
        """The final decoder states of a teacher-forced pass."""
        memory, pad = self.encode(src)
        t = tgt_in.shape[1]
        causal = torch.triu(torch.full((t, t), -1e9), diagonal=1)
        x = self.embed(tgt_in)
        for layer in self.dec:
            x = layer(x, memory, causal, pad)
        return self.dec_norm(x)

    def forward(self, src, tgt_in):
        return self.states(src, tgt_in) @ self.emb.weight.t()

    def logits_and_values(self, src, tgt_in):
        """Logits and the value head's estimates from one pass."""
        h = self.states(src, tgt_in)
        return h @ self.emb.weight.t(), self.value(h).squeeze(-1)

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


@torch.no_grad()
def sample(model, src, n, temperature, steps):
    """`n` samples per source at `temperature` with the key/value cache, `steps` tokens each
    (no EOS handling, as the fresh models of the benchmark never stop early); returns the
    tokens and, per token, the log-probability under the model and under the distribution
    it was drawn from (the framework's sampler returns both)."""
    memory, pad = model.encode(src)
    memory, pad = memory.repeat_interleave(n, 0), pad.repeat_interleave(n, 0)
    caches = [({}, {}) for _ in model.dec]
    token = torch.ones(memory.shape[0], 1, dtype=torch.long)
    out, log_probs, behaviour = [], [], []
    for step in range(steps):
        x = model.embed(token, step)
        for layer, cache in zip(model.dec, caches):
            x = layer(x, memory, None, pad, cache)
        logits = model.dec_norm(x[:, -1]) @ model.emb.weight.t()
        tempered = F.log_softmax(logits / temperature, -1)
        token = torch.multinomial(tempered.exp(), 1)
        out.append(token)
        log_probs.append(F.log_softmax(logits, -1).gather(1, token))
        behaviour.append(tempered.gather(1, token))
    return torch.cat(out, 1), torch.cat(log_probs, 1), torch.cat(behaviour, 1)


def timed(fn, units, seconds):
    """Per-call and per-second figures of `fn` (one warm-up call, then >= 2 calls for
    `seconds`), as bench/phases.ts reports them."""
    fn()
    sync()
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while calls < 2 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    ms = 1000 * (time.perf_counter() - start) / calls
    cpu_ms = 1000 * (time.process_time() - cpu) / calls
    return {"ms": round(ms, 1), "cpu_ms": round(cpu_ms, 1), "per_s": round(1000 * units / ms, 1),
            "per_cpu_s": round(1000 * units / cpu_ms, 1), "calls": calls, "units": units}


def ids(rows, length):
    """Random sources as the framework's batcher makes them: `length` - 1 ids, then EOS (2)."""
    return torch.cat([torch.randint(4, VOCAB, (rows, length - 1)),
                      torch.full((rows, 1), 2, dtype=torch.long)], 1)


def adam(params):
    """The framework's Adam settings (core/optim.ts)."""
    return torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)


def bench_bc_step(seconds):
    """bench/phases.ts's BC step: batch 64, lengths 16, label smoothing 0.1, dropout, clip 1."""
    model = Model()
    model.train()
    opt = adam(model.parameters())
    src = ids(BATCH, SRC_LEN)
    tgt = torch.cat([torch.ones(BATCH, 1, dtype=torch.long), ids(BATCH, TGT_LEN)], 1)

    def step():
        opt.zero_grad()
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1),
                               label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return timed(step, BATCH * TGT_LEN, seconds)


def bench_grow_batch(seconds):
    """bench/phases.ts's Grow batch: 16 sources x 4 samples at T 0.8, 24 steps (64 rows)."""
    model = Model()
    model.eval()
    src = ids(16, SRC_LEN)
    return timed(lambda: sample(model, src, 4, 0.8, DEC_STEPS), 64, seconds)


def gae(rewards, values, gamma=1.0, lam=0.95):
    """Advantages and returns over [B, T] (no bootstrap after the last token)."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        nxt = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros(rewards.shape[0])
        running = rewards[:, t] + gamma * nxt - values[:, t] + gamma * lam * running
        adv[:, t] = running
    return adv, adv + values


def picked(logits, tokens):
    """log softmax(logits)[token] per position."""
    return F.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def bench_ppo_rollout(seconds, rollout=128, minibatch=64, epochs=4, beta=0.2, eps=0.2):
    """bench/phases.ts's PPO rollout batch: 128 samples at T 1 (in decoding batches of 64),
    scored in chunks of 64 (policy log-probs and values, reference log-probs, the entropy
    of the first chunk), KL-penalised GAE, whitened advantages, then 4 epochs of shuffled
    minibatches of 64 on the clipped policy loss + 0.1 x clipped value loss (clip 1, Adam).
    Random scores stand in for the reward; dropout off, as the framework's PPO."""
    policy, reference = Model(value_head=True), Model()
    policy.eval()
    reference.eval()
    opt = adam(policy.parameters())
    src = ids(rollout, SRC_LEN)

    def step():
        tokens = torch.cat([sample(policy, src[i:i + minibatch], 1, 1.0, DEC_STEPS)[0]
                            for i in range(0, rollout, minibatch)])
        tgt_in = torch.cat([torch.ones(rollout, 1, dtype=torch.long), tokens[:, :-1]], 1)
        with torch.no_grad():
            old_lp, old_v, ref_lp = [], [], []
            for i in range(0, rollout, minibatch):
                logits, values = policy.logits_and_values(src[i:i + minibatch], tgt_in[i:i + minibatch])
                old_lp.append(picked(logits, tokens[i:i + minibatch]))
                old_v.append(values)
                ref_lp.append(picked(reference(src[i:i + minibatch], tgt_in[i:i + minibatch]),
                                     tokens[i:i + minibatch]))
                if i == 0:
                    logp = F.log_softmax(logits, -1)
                    _entropy = -(logp.exp() * logp).sum(-1).mean()
            old_lp, old_v, ref_lp = torch.cat(old_lp), torch.cat(old_v), torch.cat(ref_lp)
            rewards = -beta * (old_lp - ref_lp)
            rewards[:, -1] += torch.rand(rollout)
            adv, returns = gae(rewards, old_v)
            adv = (adv - adv.mean()) / torch.sqrt(adv.var(unbiased=False) + 1e-8)
        for _ in range(epochs):
            for idx in torch.randperm(rollout).split(minibatch):
                opt.zero_grad()
                logits, values = policy.logits_and_values(src[idx], tgt_in[idx])
                ratio = torch.exp(picked(logits, tokens[idx]) - old_lp[idx])
                pg = -torch.min(ratio * adv[idx], ratio.clamp(1 - eps, 1 + eps) * adv[idx]).mean()
                clipped = old_v[idx] + (values - old_v[idx]).clamp(-eps, eps)
                vf = 0.5 * torch.max((values - returns[idx]) ** 2, (clipped - returns[idx]) ** 2).mean()
                (pg + 0.1 * vf).backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()

    return timed(step, rollout, seconds)


def main_phases():
    """The three phases of bench/phases.ts; prints one JSON line."""
    torch.manual_seed(0)
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "device": ARGS.device,
        "threads": torch.get_num_threads(),
        "blas_threads": blas_threads(),
        "bc_step": bench_bc_step(ARGS.seconds),
        "grow_batch": bench_grow_batch(ARGS.seconds),
        "ppo_rollout": bench_ppo_rollout(ARGS.seconds),
    }))


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
    if ARGS.phases:
        main_phases()
        return
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
