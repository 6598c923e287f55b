"""onnxruntime CUDA provider: where the kernel time goes, and images/s per provider option.

    python3 bench/gpu/ort_cuda_options.py IMAGES_DIR MODEL_DIR

Prints, for the fp32 and fp16 EfficientNet-Lite0 files: kernel time by provider and the top
ops (from onnxruntime's profiler), then images/s at batch 32 and 256 with the input already on
the GPU, one session per option set, each session seeing one batch size after the other.
Runs on CPU too (one option set), to check the script itself.
"""

import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from encoders.preprocess import load_image, preprocess
from encoders.training import variants as V

dev = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
paths = sorted(Path(sys.argv[1]).glob("*.jpg"))[:256]
x = preprocess([load_image(p) for p in paths]).astype(np.float32)
md = Path(sys.argv[2])
models = {"fp32": md / "efficientnet_lite0.onnx", "fp16": V.ensure_variant(md, "fp16")}
EP = "CUDAExecutionProvider" if dev == "cuda" else "CPUExecutionProvider"


def session(path, po, profile=False):
    o = ort.SessionOptions()
    o.log_severity_level = 3
    if profile:
        o.enable_profiling = True
        o.profile_file_prefix = str(Path(tempfile.gettempdir()) / "vrec_ort_profile")
    prov = [(EP, po), "CPUExecutionProvider"] if dev == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=o, providers=prov)


def timed(sess, b, reps):
    xv = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x[:b]), dev, 0)
    bd = sess.io_binding()
    bd.bind_ortvalue_input(
        "pixels" if "pixels" in [i.name for i in sess.get_inputs()] else sess.get_inputs()[0].name,
        xv,
    )
    bd.bind_output(sess.get_outputs()[0].name, dev)
    for _ in range(3):
        sess.run_with_iobinding(bd)
    t = time.perf_counter()
    for _ in range(reps):
        sess.run_with_iobinding(bd)
    return len(x[:b]) * reps / (time.perf_counter() - t)


for m, path in models.items():
    s = session(path, {}, profile=True)
    timed(s, 32, 3)
    prof = json.loads(Path(s.end_profiling()).read_text())
    by_prov, by_op = collections.Counter(), collections.Counter()
    for e in prof:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            a = e.get("args", {})
            by_prov[a.get("provider")] += e["dur"]
            by_op[(a.get("op_name"), a.get("provider"))] += e["dur"]
    print(m, "kernel us by provider", dict(by_prov), flush=True)
    print(m, "top ops", by_op.most_common(8), flush=True)
configs = [
    ("default", {}),
    ("heuristic", {"cudnn_conv_algo_search": "HEURISTIC"}),
    ("nhwc", {"prefer_nhwc": "1"}),
    ("nhwc+heuristic", {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"}),
    ("no-max-ws", {"cudnn_conv_use_max_workspace": "0"}),
    ("tf32-off+exh", {"use_tf32": "0"}),
]
if dev != "cuda":
    configs = configs[:1]
for m, path in models.items():
    for name, po in configs:
        try:
            s = session(path, po)
            t0 = time.perf_counter()
            r32 = timed(s, 32, 20)
            r256 = timed(s, 256, 8)
            print(
                f"{m:5} {name:16} b32 {r32:8.0f} img/s  b256 {r256:8.0f} img/s  "
                f"({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        except Exception as exc:
            print(m, name, "failed", str(exc)[:300], flush=True)
try:
    import torch

    if torch.cuda.is_available():
        from encoders.training.export import build_torch_model

        net = build_torch_model().cuda().half().to(memory_format=torch.channels_last).eval()
        xt = torch.from_numpy(x).cuda().half().to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(3):
                net(xt)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(8):
                net(xt)
            torch.cuda.synchronize()
        print(
            f"torch fp16 channels_last eager b256 {256 * 8 / (time.perf_counter() - t):.0f} img/s",
            flush=True,
        )
except Exception as exc:
    print("torch", exc)
