#!/usr/bin/env python3
"""The PyTorch side of the MiniLM benchmarks: sentence-transformers encoding the same texts that
Flint embeds, on the CPU (`--device cpu --threads 2`) or a GPU (`--device cuda`). Prints one
JSON object: embeddings per second over `--seconds` after a warm-up.

Runs on a machine without Rust: only torch and sentence-transformers are needed.
"""

import argparse
import json
import time

import torch
from sentence_transformers import SentenceTransformer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="the sentence-transformers model directory")
    parser.add_argument("--texts", required=True, help="a JSON file with a list of texts")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.texts) as f:
        texts = json.load(f)
    model = SentenceTransformer(args.model, device=args.device)
    model.max_seq_length = args.max_seq_length
    batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]

    def encode(batch):
        model.encode(batch, batch_size=args.batch, convert_to_numpy=True, normalize_embeddings=False)

    for batch in batches[:3]:
        encode(batch)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        encode(batches[done % len(batches)])
        done += 1
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "embeddings_per_second": done * args.batch / elapsed,
        "batch": args.batch,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
