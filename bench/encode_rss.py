"""Worker RSS before/after one encoder batch of 32 small PNGs of 6300x6300 pixels (issue 12,
item 6). Needs a broker: ``python bench/encode_rss.py --broker 127.0.0.1:19292``."""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
from pathlib import Path

from PIL import Image

from streams.events import ProductUpload
from streams.settings import Settings, isolated_run
from vrec_tools.harness import Pipeline


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="127.0.0.1:19292")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--side", type=int, default=6300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = isolated_run(
            Settings(broker=args.broker, data_dir=Path(tmp)), "rss", encoder_batch=args.n
        )
        pngs = []
        for i in range(args.n):
            buf = io.BytesIO()
            Image.new("RGB", (args.side, args.side), (i * 7 % 256, 90, 160)).save(buf, "PNG")
            pngs.append(buf.getvalue())
        print(f"{args.n} PNGs of {args.side}x{args.side}, {len(pngs[0]) / 1000:.1f} KB each")
        products = [
            ProductUpload(item_id=f"big-{i}", image_b64=base64.b64encode(d).decode())
            for i, d in enumerate(pngs)
        ]
        with Pipeline(settings) as pipe:
            warm = ProductUpload(item_id="warm", image_b64=base64.b64encode(_tiny()).decode())
            pipe.index([warm])  # model loaded, agents running
            time.sleep(1)
            pid = pipe.worker.proc.pid
            before = _status(pid)
            t0 = time.monotonic()
            pipe.index(products)
            took = time.monotonic() - t0
            after = _status(pid)
            n_emb = len(pipe.embeddings())
        print(
            f"worker RSS before {before['VmRSS']} MB (peak {before['VmHWM']} MB); after the batch "
            f"{after['VmRSS']} MB, peak {after['VmHWM']} MB; {n_emb - 1}/{args.n} embedded "
            f"in {took:.1f} s"
        )


def _tiny() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


if __name__ == "__main__":
    main()
