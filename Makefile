# One-command set-up: every target builds .venv first (torch as the local CPU wheel).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[nir,lava,test]"
	$(BIN)/pip install -q --ignore-requires-python --no-deps lava-nc==0.10.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/snnconvert --threads 1 examples/mnist/model.onnx --calib examples/mnist/calib.npz -T 8 \
		-o out/mnist.snn.onnx
	$(BIN)/snnconvert --threads 1 eval examples/mnist/model.onnx --calib examples/mnist/calib.npz \
		--data examples/mnist/test.npz --timesteps 1,2,4,8,16,32,64 --plot out/mnist_accuracy.png

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_speed.py
	$(BIN)/python benchmarks/bench_lava_eval.py

clean:
	rm -rf $(VENV)
