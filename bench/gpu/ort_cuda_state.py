"""Which process state slowed onnxruntime CUDA inside ``vrec bench encoder``? A subprocess a case.

    python3 bench/gpu/ort_cuda_state.py IMAGES_DIR MODEL_DIR

Cases: a plain session; a new IO binding per call; the bench's own row (device and host input);
torch run first; an ORT CPU session run first; two sessions alternating; ``preload_dlls`` first.
On an H200 all of them ran at full speed (results/2026-11-30-h200-ort-cuda-state.log): the slow
rows came from changing the batch size on one session, which these cases do once only.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = [
    "direct",
    "direct_newbinding",
    "bench_row",
    "bench_row_host",
    "torch_first",
    "cpu_first",
    "alternate",
    "preload_first",
]


def case(name, img_dir, md):
    import onnxruntime as ort

    from encoders.preprocess import load_image, preprocess
    from encoders.training import bench as B
    from encoders.training import variants as V

    paths = sorted(Path(img_dir).glob("*.jpg"))[:256]
    x = preprocess([load_image(p) for p in paths]).astype(np.float32)
    fp16 = V.ensure_variant(Path(md), "fp16")
    fp32 = Path(md) / "efficientnet_lite0.onnx"
    if name == "preload_first":
        ort.preload_dlls()
    if name == "torch_first":
        import torch

        from encoders.training.export import build_torch_model

        net = build_torch_model().cuda().half()
        with torch.inference_mode():
            net(torch.from_numpy(x).cuda().half())
            torch.cuda.synchronize()
    if name == "cpu_first":
        c = B._ort_cpu_row("cpu", "fp32", fp32, 16)
        for _ in range(3):
            c.infer(x[:32])

    def direct(path, newb):
        s = ort.InferenceSession(
            str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        vals = {}
        bd = s.io_binding()

        def infer(xb):
            b = s.io_binding() if newb else bd
            k = xb.shape[0]
            if k not in vals:
                vals[k] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(xb), "cuda", 0)
            b.bind_ortvalue_input(s.get_inputs()[0].name, vals[k])
            b.bind_output(s.get_outputs()[0].name, "cuda")
            s.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()[0]

        return infer

    if name.startswith("direct") or name in ("preload_first",):
        f = direct(fp16, name.endswith("newbinding"))
        fs = [f]
    elif name == "bench_row_host":
        fs = [B._ort_cuda_row("r", "fp16", fp16, 16, (32, 256)).infer]
    elif name == "alternate":
        fs = [
            B._ort_cuda_row("a", "fp32", fp32, 16, (32, 256)).infer,
            B._ort_cuda_row("b", "fp16", fp16, 16, (32, 256), device_input=True).infer,
        ]
    else:
        fs = [B._ort_cuda_row("r", "fp16", fp16, 16, (32, 256), device_input=True).infer]
    out = []
    for b, reps in ((32, 20), (256, 4)):
        for f in fs:
            for _ in range(2):
                f(x[:b])
        t = time.perf_counter()
        for _ in range(reps):
            for f in fs:
                f(x[:b])
        out.append(f"b{b} {b * reps * len(fs) / (time.perf_counter() - t):7.0f} img/s")
    print(f"{name:20} {'  '.join(out)}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        case(sys.argv[3], sys.argv[1], sys.argv[2])
    else:
        for c in CASES:
            t = time.perf_counter()
            r = subprocess.run(
                [sys.executable, __file__, sys.argv[1], sys.argv[2], c],
                capture_output=True,
                text=True,
                timeout=120,
            )
            print(
                (r.stdout.strip() or r.stderr.strip()[-400:]),
                f"({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
