"""Write the preprocessed benchmark arrays to benchmarks/data/ and check each model's accuracy in onnxruntime.

Per model: <model>_calib.npz and <model>_test.npz (x float32 model input, y int64). MNIST family: calib =
first 1,000 train images, test = first 2,000 test images. CIFAR-10: calib = 1,000 train images (100 per
class), test = the first 100 JPEG test images of each class. Also mnist_train5000.npz and
fmnist_{train,test}.npz (x/255, [N,1,28,28]). `--verify-full` re-measures the PROVENANCE accuracies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from datasets import DATA_DIR, MODELS, cifar10_test, cifar10_train, fashion_mnist, mnist, preprocess

# Accuracy (%) stated in the models' PROVENANCE.md: full MNIST test set / full CIFAR-10 JPEG-q75 test set,
# and for CIFAR-10 the exact first-100 test images.
PROVENANCE_FULL = {
    "mnist-8": 98.90, "sinabs-mnist-cnn": 97.88, "convnet_avgpool": 97.95, "mnist-net_256x2": 98.08,
    "resnet20-cifar10": 81.03, "resnet_2b": 68.70, "cifar_base_kw": 58.02, "cifar10_small": 62.34,
}
PROVENANCE_EXACT100 = {"resnet20-cifar10": 94.0, "resnet_2b": 77.0, "cifar_base_kw": 73.0, "cifar10_small": 61.0}


def predict(name: str, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Arg-max class of the shared model `name` on preprocessed x (one image at a time for batch-1 models)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(MODELS[name].path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    step = 1 if inp.shape[0] == 1 else batch
    out = [sess.run(None, {inp.name: x[i:i + step]})[0] for i in range(0, len(x), step)]
    return np.concatenate(out).reshape(len(x), -1).argmax(1)


def accuracy(name: str, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(predict(name, x) == y) * 100)


def save(stem: str, x: np.ndarray, y: np.ndarray) -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA_DIR / f"{stem}.npz", x=x.astype(np.float32), y=y.astype(np.int64))


def unit_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0,1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


def prepare() -> dict[str, float]:
    """Write every file; return the accuracy (%) of each model on its test file."""
    raw = {
        "mnist": (mnist("train", 1000), mnist("test", 2000)),
        "cifar10": (cifar10_train(1000, seed=0), cifar10_test(1000)),
    }
    acc = {}
    for name, spec in MODELS.items():
        (xc, yc), (xt, yt) = raw[spec.dataset]
        save(f"{name}_calib", preprocess(name, xc), yc)
        x_test = preprocess(name, xt)
        save(f"{name}_test", x_test, yt)
        acc[name] = accuracy(name, x_test, yt)
        print(f"{name:18s} test file {len(yt)} images: {acc[name]:6.2f} %")
    x, y = mnist("train", 5000)
    save("mnist_train5000", unit_nchw(x), y)
    for split in ("train", "test"):
        x, y = fashion_mnist(split)
        save(f"fmnist_{split}", unit_nchw(x), y)
    return acc


def verify_full() -> bool:
    """Re-measure the PROVENANCE accuracies on the full test sets; True when all match to 0.01 %."""
    full = {"mnist": mnist("test"), "cifar10": cifar10_test()}
    ok = True
    for name, spec in MODELS.items():
        checks = [("full", full[spec.dataset], PROVENANCE_FULL[name])]
        if name in PROVENANCE_EXACT100:
            checks.append(("exact-100", cifar10_test(100, exact=True), PROVENANCE_EXACT100[name]))
        for label, (x, y), expected in checks:
            got = accuracy(name, preprocess(name, x), y)
            match = abs(got - expected) < 0.01
            ok &= match
            print(f"{name:18s} {label:9s} {got:6.2f} % (PROVENANCE {expected:.2f} %) {'ok' if match else 'MISMATCH'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verify-full", action="store_true", help="also check full-test-set accuracies")
    args = parser.parse_args()
    t0 = time.time()
    prepare()
    if args.verify_full and not verify_full():
        raise SystemExit("accuracy differs from PROVENANCE")
    print(f"wrote {DATA_DIR} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
