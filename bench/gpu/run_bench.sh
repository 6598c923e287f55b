#!/bin/bash
# vrec bench encoder on a CUDA machine. Needs onnxruntime-gpu (CUDA 13 build, e.g. 1.31.1) and
# torch importable, and the CUDA/cuDNN libraries of the nvidia-* wheels on the loader path.
#   bench/gpu/run_bench.sh IMAGES_DIR MODEL_DIR OUT_DIR
set -o pipefail
images=${1:?images dir}; models=${2:?model dir}; out=${3:-.}
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
if [ -d "$SP/nvidia" ]; then
  LD_LIBRARY_PATH=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | tr '\n' ':')${LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -m vrec_tools.cli bench encoder --images "$images" --n 1024 --catalogue 1000 \
  --device cuda --variants fp32 --no-spin-rows --rounds 4 --gpu-batch 256 \
  --model-dir "$models" --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
python3 bench/gpu/ort_cuda_options.py "$images" "$models" 2>&1 | tee "$out/ort-cuda-options.log"
