#!/usr/bin/env python3
"""The PyTorch side of the MiniLM benchmarks: sentence-transformers encoding the same texts that
Flint embeds, on the CPU (`--device cpu --threads 2`) or a GPU (`--device cuda`). Measures every
texts file at every batch size in one process (starting Python, torch and the model takes
longer than a measurement), each for `--seconds` after a warm-up, and prints one JSON object:
`results`, a list of {texts, batch, embeddings_per_second}, in order.

Runs on a machine without Rust: only torch and sentence-transformers are needed.
"""

import argparse
import json
import time

import torch
from sentence_transformers import SentenceTransformer


def rate(model, texts, batch_size, seconds, device):
    """Embeddings per second encoding `texts` in batches of `batch_size`, over `seconds`."""
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]

    def encode(batch):
        model.encode(batch, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=False)

    for batch in batches[:3]:
        encode(batch)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(batches[done % len(batches)])
        done += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return done * batch_size / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="the sentence-transformers model directory")
    parser.add_argument("--texts", required=True, nargs="+", help="JSON files, each a list of texts")
    parser.add_argument("--batch", type=int, required=True, nargs="+")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device=args.device)
    model.max_seq_length = args.max_seq_length
    results = []
    for path in args.texts:
        with open(path) as f:
            texts = json.load(f)
        for batch_size in args.batch:
            results.append({"texts": path, "batch": batch_size,
                            "embeddings_per_second": rate(model, texts, batch_size, args.seconds, args.device)})
    print(json.dumps({
        "results": results,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
