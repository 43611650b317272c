"""Fine-tuning of converted SNNs with surrogate gradients (BPTT), SNN2ANN rate-substituted
training, Joint A-SNN (ANN and SNN branches on shared factorized weights) and a pipe-S
sharpening pre-stage; tuned parameters go back into the IR."""
from .config import METHODS, FinetuneConfig
from .trainer import EpochRecord, History, Trainer, accuracy, build_network, finetune

__all__ = ["METHODS", "EpochRecord", "FinetuneConfig", "History", "Trainer", "accuracy",
           "build_network", "finetune"]
