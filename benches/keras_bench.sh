#!/usr/bin/env bash
# The Keras-format benchmark of BENCHMARKS.md: keras.applications' ResNet50
# and MobileNetV2 (random weights) saved by Keras as `.keras`,
# `.weights.h5` and the legacy `.h5`, Xception, ConvNeXtTiny and
# InceptionResNetV2 as `.keras`, and 500 small dense networks as
# `.weights.h5`, scanned by cntscope (each network's whole graph, read from
# the `.keras` file's config) against the same weights as safetensors, against `cat` of the files (the read floor), and
# against h5py reading every dataset into numpy (reading only, no
# measure), in one run, best of 5.
#
#   pip install keras torch h5py safetensors      # benchmark machine only
#   KERAS_BACKEND=torch bash benches/keras_bench.sh [DIR] [PYTHON]   # DIR: /tmp/cntscope-keras
default_dir=/tmp/cntscope-keras
source "$(dirname "$0")/setup.sh"
"$py" - "$dir" <<'PY' 2>/dev/null
import os, sys
import keras, numpy as np
from safetensors.numpy import save_file
sys.path.insert(0, "tests/fixtures/keras")
from make_fixtures import names
base = sys.argv[1]
rng = np.random.default_rng(0)
def randomise(m):
    m.set_weights([rng.uniform(0.2, 2, w.shape).astype(np.float32) if "variance" in v.path
                   else rng.normal(0, 0.05, w.shape).astype(np.float32) for w, v in zip(m.get_weights(), m.weights)])
apps = keras.applications
for name, make, every_format in [("resnet50", apps.ResNet50, True), ("mobilenet_v2", apps.MobileNetV2, True),
                                 ("xception", apps.Xception, False), ("convnext_tiny", apps.ConvNeXtTiny, False),
                                 ("inception_resnet_v2", apps.InceptionResNetV2, False)]:
    if os.path.exists(f"{base}/{name}.safetensors"):
        continue
    m = make(weights=None)
    randomise(m)
    m.save(f"{base}/{name}.keras")
    if every_format:
        m.save_weights(f"{base}/{name}.weights.h5"); m.save(f"{base}/{name}.h5")
    save_file(names(m), f"{base}/{name}.safetensors")
small, twins = f"{base}/small-h5", f"{base}/small-st"
if not os.path.exists(twins):
    os.makedirs(small); os.makedirs(twins)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(16), keras.layers.Dense(10)])
    for i in range(500):
        randomise(m)
        m.save_weights(f"{small}/mlp-{i:03}.weights.h5")
        save_file(names(m), f"{twins}/mlp-{i:03}.safetensors")
PY
best() { "$py" benches/best.py 5 "$dir" "$@"; }
h5py_read='import sys, h5py
def read(name, obj):
    if isinstance(obj, h5py.Dataset): obj[()]
for p in sys.argv[1:]:
    with h5py.File(p) as f: f.visititems(read)'
echo "| file | MB | read (cat) | h5py read | cntscope | cntscope safetensors | vs safetensors | vs read floor | vs h5py |"
echo "|---|---|---|---|---|---|---|---|---|"
# label, files to cat, then h5py's files, cntscope's paths, safetensors
# paths and the options of both scans (`twin_row` of setup.sh).
row() {
    local label=$1 cat_files=$2
    shift 2
    twin_row "$label" "$cat_files" "$h5py_read" "$@"
}
# Every scan of a network measures the whole graph at its input size
# (3x224x224; Xception and InceptionResNetV2 3x299x299): the
# `.keras` and `.h5` files read it from the config they keep; the
# `.weights.h5` and the safetensors twin are given the `.keras` as spec.
for name in resnet50 mobilenet_v2 xception convnext_tiny inception_resnet_v2; do
    keras="$dir/$name.keras"
    # h5py reads the archive's weights from a copy extracted once (not timed).
    "$py" -c "import zipfile,sys; open(sys.argv[2],'wb').write(zipfile.ZipFile(sys.argv[1]).read('model.weights.h5'))" "$keras" "$dir/$name.keras.h5"
    row "$name.keras" "$keras" "$dir/$name.keras.h5" "$keras" "$dir/$name.safetensors" --spec "$keras"
    [ -e "$dir/$name.h5" ] || continue
    row "$name.h5" "$dir/$name.h5" "$dir/$name.h5" "$dir/$name.h5" "$dir/$name.safetensors" --spec "$keras"
    f="$dir/$name.weights.h5"
    row "$name.weights.h5" "$f" "$f" "$f" "$dir/$name.safetensors" --spec "$keras"
done
row "500 small .weights.h5" "$dir/small-h5/*" "$dir/small-h5/*" "$dir/small-h5" "$dir/small-st"
