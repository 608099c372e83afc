#!/usr/bin/env bash
# The TensorFlow benchmark of BENCHMARKS.md: Keras 2's ResNet50 and
# MobileNetV2 (random weights, no optimizer) saved by `save_weights` in
# TensorFlow's checkpoint format, and the same arrays as safetensors,
# scanned by cntscope (no spec: discovery) against `cat` of the index and
# data file (the read floor) and against TensorFlow's own reader loading
# every variable (`tf.train.load_checkpoint`, each read and summed, timed
# in its process after TensorFlow's import), in one run, best of 7.
#
#   pip install "tensorflow-cpu==2.15.*" safetensors   # benchmark machine only
# Then the same networks saved whole by Keras 2's `model.save`, as a
# SavedModel folder (its graph read from keras_metadata.pb) and as a
# legacy .h5 (its graph from the file's model_config): both scanned as
# the whole network, against `cat` of the SavedModel's variables and
# metadata.
#
#   bash benches/tf_bench.sh [DIR] [PYTHON]           # DIR: /tmp/cntscope-tf
default_dir=/tmp/cntscope-tf
source "$(dirname "$0")/setup.sh"
"$py" - "$dir" <<'PY' 2>/dev/null
import os, sys
import numpy as np, tensorflow as tf
from safetensors.numpy import save_file
for name in ("ResNet50", "MobileNetV2"):
    prefix = os.path.join(sys.argv[1], name, "ckpt")
    if os.path.exists(prefix + ".index"):
        continue
    m = getattr(tf.keras.applications, name)(weights=None)
    m.save_weights(prefix)
    m.save(os.path.join(sys.argv[1], f"{name}-saved"))
    m.save(os.path.join(sys.argv[1], f"{name}.h5"))
    r = tf.train.load_checkpoint(prefix)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    save_file({k[:-len(suffix)]: np.ascontiguousarray(r.get_tensor(k)) for k in r.get_variable_to_shape_map()
               if k.endswith(suffix) and not k.startswith("optimizer/") and "/" in k[:-len(suffix)]},
              os.path.join(sys.argv[1], f"{name}.safetensors"))
PY
best() { "$py" benches/best.py 7 "$dir" "$@"; }
# TensorFlow's reader timed inside one process, after its import: best of 7.
load='import sys, time, numpy as np, tensorflow as tf
def load():
    t = time.perf_counter()
    r = tf.train.load_checkpoint(sys.argv[1])
    [np.sum(r.get_tensor(k)) for k, d in r.get_variable_to_dtype_map().items() if d != tf.string]
    return time.perf_counter() - t
print(f"{min(load() for _ in range(7)):.4f}")'
echo "| checkpoint | MB | read (cat) | TensorFlow reader (in process, import excluded) | cntscope cpu | same arrays as safetensors | scan / TensorFlow's read | vs safetensors | vs read |"
echo "|---|---|---|---|---|---|---|---|---|"
for name in ResNet50 MobileNetV2; do
    p="$dir/$name/ckpt"
    cat "$p".* > /dev/null
    mb=$(du -cm "$p".index "$p".data-* | tail -1 | cut -f1)
    t_read=$(best sh -c "cat $p.index $p.data-* > /dev/null")
    t_tf=$("$py" -c "$load" "$p" 2>/dev/null)
    t_cpu=$(best "$bin" scan "$p.index" --device cpu -o OUT)
    t_st=$(best "$bin" scan "$dir/$name.safetensors" --device cpu -o OUT)
    "$py" -c "import sys; r,t,c,s=map(float,sys.argv[1:5]); print(f'| $name | $mb | {r:.4f} s | {t:.4f} s | {c:.4f} s | {s:.4f} s | {c/t:.2f}x | {c/s:.2f}x | {c/r:.1f}x |')" "$t_read" "$t_tf" "$t_cpu" "$t_st"
done
echo
echo "| model.save | MB | read (cat) | SavedModel | same model as .h5 | SavedModel / .h5 | vs read |"
echo "|---|---|---|---|---|---|---|"
for name in ResNet50 MobileNetV2; do
    saved="$dir/$name-saved"
    files="$saved/variables/variables.index $saved/variables/variables.data-* $saved/keras_metadata.pb"
    cat $files > /dev/null
    mb=$(du -cm $files | tail -1 | cut -f1)
    t_read=$(best sh -c "cat $files > /dev/null")
    t_saved=$(best "$bin" scan "$saved" --device cpu -o OUT)
    t_h5=$(best "$bin" scan "$dir/$name.h5" --device cpu -o OUT)
    "$py" -c "import sys; r,s,h=map(float,sys.argv[1:4]); print(f'| $name | $mb | {r:.4f} s | {s:.4f} s | {h:.4f} s | {s/h:.2f}x | {s/r:.1f}x |')" "$t_read" "$t_saved" "$t_h5"
done
