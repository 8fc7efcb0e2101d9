"""Reference timing of the bench-small shape in PyTorch (for bench/README.md).

Not part of CI. Needs Debian's python3-torch (PyTorch 1.13 with OpenBLAS):

    apt-get install python3-torch
    python3 bench/pytorch_bench.py --threads 1

Prints one JSON line with train_tokens_per_s and decode_tokens_per_s, measured the
same way as `deno task bench`: pre-LN encoder-decoder, d_model 256, 4 heads, FFN 1024,
3+3 layers, shared vocabulary 8000 (tied embeddings and output projection), batch 32,
source and target length 24, Adam, no dropout; greedy decoding of batch 64 for 24 steps
with a per-layer key/value cache.
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
        opt.step()

    for _ in range(2):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds / 2:
        step()
        steps += 1
    train = steps * BATCH * TGT_LEN / (time.perf_counter() - start)

    model.eval()
    dsrc = torch.randint(4, VOCAB, (DEC_BATCH, SRC_LEN))
    model.greedy(dsrc, DEC_STEPS)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds / 2:
        model.greedy(dsrc, DEC_STEPS)
        runs += 1
    decode = runs * DEC_BATCH * DEC_STEPS / (time.perf_counter() - start)
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "threads": args.threads,
        "train_tokens_per_s": round(train, 1),
        "decode_tokens_per_s": round(decode, 1),
    }))


if __name__ == "__main__":
    main()
