"""Fine-tuning options, shared by the Python API, the CLI and checkpoints."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import OptionError
from ..runtime.neurons import SURROGATES

METHODS = ("bptt", "snn2ann", "joint")
PRECISIONS = ("fp32", "bf16")
JOINT_NORMS = ("frozen", "batch", "none")


@dataclass
class FinetuneConfig:
    """What to train and how.

    method        "bptt": backprop through time with the surrogate gradient;
                  "snn2ann": no-grad SNN forward, gradient through an ANN branch fed the
                  SNN's rates (memory independent of T), with adaptive threshold adjustment;
                  "joint": Joint A-SNN, an ANN and an SNN branch sharing the U, V factors of
                  every weight (separate singular values and BatchNorms), with ANN->SNN
                  distillation; the SNN branch is written back (see finetune/joint.py).
    joint_alpha, joint_beta, joint_temperature  the joint loss's KD weight α, feature-loss
                  weight β and KD temperature (the paper's code: 0.1, 1e-6, 3);
    joint_branches  auxiliary classifier heads on intermediate neuron layers (the paper: 3);
                  fresh heads are trained at 10x lr;
    joint_norm    the BatchNorm re-introduced per branch after each synapse feeding a neuron:
                  "frozen" (statistics of the first batch, γ and β trained), "batch" (the
                  paper's: batch statistics in training, running ones deployed) or "none".
    sharpen_epochs  pipe-S pre-stage: epochs of ANN-twin training with the sharpened
                  clipped ReLU before SNN fine-tuning (0 = off); ``sharpen_to`` is the final
                  sharpness s (activation ramps from lo=s to hi=1-s, in units of θ).
    lr            Adam's learning rate for parameters of RMS >= 0.05; smaller parameters get
                  lr · rms / 0.05 (see runtime.training.scale_for)
    precision     "bf16": forward passes under bfloat16 autocast (matmuls and convolutions; the
                  loss in float32), for GPUs; "fp32" otherwise
    logit_scale   the loss is CE(scale · readout); None fits the scale (temperature scaling)
                  on the converted network first, since converted readouts can be tiny or huge
                  (a bias-free net fed x/255 has logits 255x smaller than it was trained with).
    leak          set every neuron's LIF leak before training (None keeps the IR's);
    train_leak    learn each layer's leak (in [0, 0.999]) with the other parameters.
    timesteps     T of training and validation; on time-varying data [N, T, ...] at most its T.
    delays        D > 0: DCLS, every dense synapse becomes a delay synapse (delays 0..D steps)
                  whose per-connection delays are learned (see finetune.delays), and so do
                  those of delay synapses already in the network; 0: delays stay as they are.
    train_delays  False keeps the delays drawn at the start fixed (the random-delay ablation).
    delay_init    "uniform" (DCLS: positions drawn in [0, D]) or "zero" (start from the
                  network as it is).
    delay_lr_scale  the positions' learning rate over ``lr`` (DCLS: 100).
    delay_ste  after σ reaches its floor, run the rounded (integer) delays forward with the
                  Gaussian kernel's gradient (straight-through), so training sees the network
                  it deploys (not in DCLS).
    """

    timesteps: int = 4
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 64
    weight_decay: float = 0.0
    device: str = "cpu"
    surrogate: str = "atan"
    alpha: float = 2.0
    method: str = "bptt"
    train_thresholds: bool = True
    leak: float | None = None
    train_leak: bool = False
    sharpen_epochs: int = 0
    sharpen_to: float = 0.25
    ata: bool = True
    ata_tolerance: float = 0.1
    ata_step: float = 0.01
    snn_chunk: int = 4
    logit_scale: float | None = None
    eval_batch_size: int = 256
    seed: int = 0
    precision: str = "fp32"
    delays: int = 0
    train_delays: bool = True
    delay_init: str = "uniform"
    delay_lr_scale: float = 100.0
    delay_ste: bool = False
    joint_alpha: float = 0.1
    joint_beta: float = 1e-6
    joint_temperature: float = 3.0
    joint_branches: int = 3
    joint_norm: str = "frozen"

    def validate(self) -> None:
        if self.timesteps < 1:
            raise OptionError(f"timesteps must be at least 1, got {self.timesteps}")
        if self.epochs < 0 or self.sharpen_epochs < 0:
            raise OptionError("epochs must be >= 0")
        if self.lr <= 0:
            raise OptionError(f"the learning rate must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise OptionError(f"batch size must be at least 1, got {self.batch_size}")
        if self.method not in METHODS:
            raise OptionError(f"unknown fine-tuning method '{self.method}'",
                              hint=f"Use one of: {', '.join(METHODS)}.")
        if self.surrogate not in SURROGATES:
            raise OptionError(f"unknown surrogate '{self.surrogate}'",
                              hint=f"Use one of: {', '.join(SURROGATES)}.")
        if self.leak is not None and not 0.0 <= self.leak < 1.0:
            raise OptionError(f"leak must be in [0, 1), got {self.leak}")
        if not 0.0 <= self.sharpen_to < 0.5:
            raise OptionError(f"sharpen_to must be in [0, 0.5), got {self.sharpen_to}")
        if self.logit_scale is not None and not self.logit_scale > 0:
            raise OptionError(f"logit_scale must be positive, got {self.logit_scale}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"unknown precision '{self.precision}'", hint=f"Use one of: {', '.join(PRECISIONS)}.")
        if self.delays < 0:
            raise OptionError(f"the maximum delay must be >= 0 steps, got {self.delays}")
        if self.delays and (self.method != "bptt" or self.sharpen_epochs):
            raise OptionError("learning delays (DCLS) needs --method bptt without --sharpen-epochs",
                              hint="The ANN-branch methods run one step, where delays do nothing.")
        if self.delay_init not in ("uniform", "zero"):
            raise OptionError(f"unknown delay initialisation '{self.delay_init}'",
                              hint="Use uniform or zero.")
        if not self.delay_lr_scale > 0:
            raise OptionError(f"delay_lr_scale must be positive, got {self.delay_lr_scale}")
        if not 0.0 <= self.joint_alpha <= 1.0:
            raise OptionError(f"joint_alpha must be in [0, 1], got {self.joint_alpha}")
        if self.joint_beta < 0 or self.joint_temperature <= 0 or self.joint_branches < 0:
            raise OptionError("joint_beta and joint_branches must be >= 0 and joint_temperature > 0")
        if self.joint_norm not in JOINT_NORMS:
            raise OptionError(f"unknown joint_norm '{self.joint_norm}'",
                              hint=f"Use one of: {', '.join(JOINT_NORMS)}.")
        if self.method == "joint" and self.sharpen_epochs:
            raise OptionError("the pipe-S sharpening pre-stage (sharpen_epochs) applies to bptt and snn2ann",
                              hint="Use sharpen_epochs=0 with method 'joint'.")
        if self.snn_chunk < 1:
            raise OptionError(f"snn_chunk must be at least 1, got {self.snn_chunk}")

    def to_dict(self) -> dict:
        return asdict(self)
