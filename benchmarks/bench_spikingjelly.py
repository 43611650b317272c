"""SpikingJelly 2.0's converted SNN on the same ANNs: CPU time per image-step (for bench_speed.py).

    /tmp/sjvenv/bin/python benchmarks/bench_spikingjelly.py --timesteps 8,32,64 --json SJ.json

Runs in a throw-away environment that has SpikingJelly (not a dependency of snnconvert):
    python -m venv /tmp/sjvenv && /tmp/sjvenv/bin/pip install torch==2.13.0 &&
    /tmp/sjvenv/bin/pip install --no-deps spikingjelly==2.0.0 && /tmp/sjvenv/bin/pip install onnx numpy tqdm
The ANNs are rebuilt in torch from the shared ONNX files' weights (the same numbers snnconvert
converts), converted with SpikingJelly's RateCodingRecipe (99.9 % robust norm, IF neurons) on the
same calibration images, and simulated step by step as SpikingJelly's examples do, same batch and
threads as bench_speed.py. It imports nothing from snnconvert.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(str(path)).graph.initializer}


def sinabs_cnn(path: Path) -> nn.Module:
    """Conv(1-20,5) ReLU AvgPool Conv(20-32,5) ReLU AvgPool Conv(32-128,3) ReLU AvgPool Flatten
    Linear(128-500) ReLU Linear(500-10), bias-free (PROVENANCE.md of the model)."""
    net = nn.Sequential(nn.Conv2d(1, 20, 5, bias=False), nn.ReLU(), nn.AvgPool2d(2, 2),
                        nn.Conv2d(20, 32, 5, bias=False), nn.ReLU(), nn.AvgPool2d(2, 2),
                        nn.Conv2d(32, 128, 3, bias=False), nn.ReLU(), nn.AvgPool2d(2, 2), nn.Flatten(),
                        nn.Linear(128, 500, bias=False), nn.ReLU(), nn.Linear(500, 10, bias=False))
    w = _weights(path)
    convs = sorted((v for v in w.values() if v.dim() == 4), key=lambda v: v.shape[0] * v.shape[1])
    mats = [v for v in w.values() if v.dim() == 2]
    for layer, weight in zip([net[0], net[3], net[6]], [c for c in convs]):
        layer.weight.data.copy_(weight)
    lin = {tuple(m.shape): m for m in mats}
    net[10].weight.data.copy_(lin[(128, 500)].t() if (128, 500) in lin else lin[(500, 128)])
    net[12].weight.data.copy_(lin[(500, 10)].t() if (500, 10) in lin else lin[(10, 500)])
    return net.eval()


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.short = None
        if cout != cin:  # option-A shortcut (x[:, :, ::2, ::2], zero channels on both sides) as a fixed
            # 1x1 stride-2 conv, since SpikingJelly's step-mode graph refuses a functional pad
            self.short = nn.Conv2d(cin, cout, 1, 2, bias=False)
            self.short.weight.data.zero_()
            for c in range(cin):
                self.short.weight.data[c + (cout - cin) // 2, c] = 1.0

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + (x if self.short is None else self.short(x)))


class ResNet20(nn.Module):
    """akamaster/pytorch_resnet_cifar10 ResNet-20 (PROVENANCE.md of the model); ``blocks`` per
    stage: 3 for ResNet-20, 9 for ResNet-56."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(self.flatten(self.pool(self.blocks(self.relu(self.bn1(self.conv1(x)))))))


def resnet20(path: Path) -> nn.Module:
    """Weights from the ONNX file: its Conv and BatchNormalization nodes come in forward order."""
    net = ResNet20()
    model = onnx.load(str(path))
    w = _weights(path)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    onnx_convs = [n for n in model.graph.node if n.op_type == "Conv"]
    onnx_bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    for conv, node in zip(convs, onnx_convs):
        conv.weight.data.copy_(w[node.input[1]])
    for bn, node in zip(bns, onnx_bns):
        bn.weight.data.copy_(w[node.input[1]])
        bn.bias.data.copy_(w[node.input[2]])
        bn.running_mean.data.copy_(w[node.input[3]])
        bn.running_var.data.copy_(w[node.input[4]])
        bn.eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    net.linear.weight.data.copy_(w[gemm.input[1]])
    net.linear.bias.data.copy_(w[gemm.input[2]])
    return net.eval()


def main() -> None:
    from spikingjelly.activation_based import ann2snn, functional

    from datasets import MODELS, shared

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timesteps", default="8,32,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = ROOT / "benchmarks" / "data"
    models = {"sinabs-mnist-cnn": (sinabs_cnn(MODELS["sinabs-mnist-cnn"].path), 256),
              "resnet20-cifar10": (resnet20(shared("models", "resnet20-cifar10", "resnet20_cifar10.onnx")), 100)}
    import onnxruntime as ort

    results: dict = {}
    for name, (ann, batch) in models.items():
        calib = torch.from_numpy(np.load(data / f"{name}_calib.npz")["x"][:500])
        test = np.load(data / f"{name}_test.npz")["x"]
        x = torch.from_numpy(np.ascontiguousarray(test[:batch]))
        path = MODELS[name].path if name in MODELS else shared("models", "resnet20-cifar10", "resnet20_cifar10.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = sess.run(None, {sess.get_inputs()[0].name: x[:8].numpy()})[0]
            assert np.allclose(ann(x[:8]).numpy(), ref, atol=1e-3), f"{name}: torch rebuild differs from the ONNX file"
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(calib), batch_size=100)
        recipe = ann2snn.RateCodingRecipe(dataloader=[b[0] for b in loader], mode="99.9%")
        snn = ann2snn.FXConverter(recipe=recipe, device="cpu").convert(ann)
        results[name] = {}
        for t in (int(v) for v in args.timesteps.split(",")):
            def run():
                functional.reset_net(snn)
                out = 0
                for _ in range(t):
                    out = out + snn(x)
                return out
            with torch.no_grad():
                run()
                best = np.inf
                for _ in range(args.repeats):
                    c0 = time.process_time()
                    run()
                    best = min(best, time.process_time() - c0)
            results[name][t] = {"ms_per_image_step": 1e3 * best / (t * batch), "batch": batch,
                                "snn_ms": 1e3 * best}
            print(f"SpikingJelly {name:18s} T={t:3d} batch={batch}: {1e3 * best:9.1f} ms "
                  f"({1e3 * best / (t * batch):.4f} ms per image-step)", flush=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
