#!/usr/bin/env bash
# onnxruntime-gpu for `embedrank eval --device cuda` on the GPU machine: wait (up to
# ORT_WAIT s) for the carried wheel pieces /tmp/stage/ort.part0..4, install them into
# /tmp/ortgpu, check that the CUDA provider loads, and write the environment to $1/ort.env.
# The CUDA libraries come from the machine's PyTorch (its nvidia-* packages).
set -uo pipefail
W=${1:?usage: debian_ort.sh WORKDIR}
end=$((SECONDS + ${ORT_WAIT:-300}))
until [ "$(ls /tmp/stage/ort.part* 2>/dev/null | wc -l)" -ge 5 ]; do
  [ $SECONDS -ge $end ] && { echo "onnxruntime-gpu pieces missing"; exit 1; }; sleep 5
done
whl=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat /tmp/stage/ort.part0 /tmp/stage/ort.part1 /tmp/stage/ort.part2 /tmp/stage/ort.part3 \
    /tmp/stage/ort.part4 > "$whl"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortgpu "$whl" || exit 1
nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
libs=$(find "$nv" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
echo "PYTHONPATH=/tmp/ortgpu:/tmp/site LD_LIBRARY_PATH=$libs" > "$W/ort.env"
env $(cat "$W/ort.env") python3 -c 'import onnxruntime as o; p = o.get_available_providers()
print(o.__version__, p); assert "CUDAExecutionProvider" in p'
