"""Run a layer graph on Lava's CPU simulator, B samples per run, one run chunk of T+D steps per batch.

The graph is built and compiled once; between chunks only the per-sample input bias Vars are
set. Pipelined resets (interval T+D) wipe neuron state and stale synapse buffers, so every
chunk equals an independent zero-delay simulation of its batch.
"""
from __future__ import annotations

import numpy as np

from .emit import emit, from_lava, run_config, to_lava
from .fixed import FixedLayer
from .lowering import LayerGraph
from .reference import RefResult, dynamic_bias


def run_lava(lg: LayerGraph, x: np.ndarray, timesteps: int,
             fixed: dict[str, FixedLayer] | None = None, batch_size: int = 100,
             progress: bool = False, neuron_counts: bool = False) -> RefResult:
    """Simulate ``x`` [N, *input] in Lava; returns read-out and spike counts.

    Counts are per neuron [N, *shape] when ``neuron_counts`` (slow: Lava's Var.get of large
    arrays costs seconds), else per sample [N].
    """
    from lava.magma.core.run_conditions import RunSteps

    n = x.shape[0]
    b = max(1, min(batch_size, n))
    chunks = -(-n // b)
    xp = np.zeros((chunks * b,) + x.shape[1:], np.float64)
    xp[:n] = x
    first = dynamic_bias(lg, xp[:b])
    em = emit(lg, b, timesteps, fixed, first)
    cfg = run_config(fixed is not None)
    out_pop = lg.output
    readouts, counts = [], {name: [] for name in em.neurons}
    it = range(chunks)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="lava", unit="batch")
    for c in it:
        xb = xp[c * b:(c + 1) * b]
        dyn = first if c == 0 else dynamic_bias(lg, xb)
        if c > 0:
            _set_biases(lg, em, dyn, fixed, b)
        em.sink.run(condition=RunSteps(num_steps=em.interval), run_cfg=cfg)
        total = from_lava(np.asarray(em.sink.total.get(), np.float64), out_pop.shape, b)
        gain = fixed[out_pop.name].gain if fixed else 1.0
        readouts.append(total / (timesteps * gain) + out_pop.bias + dyn.get(out_pop.name, 0.0))
        for name, proc in em.neurons.items():
            if neuron_counts:
                counts[name].append(from_lava(proc.spike_count.get(), lg.populations[name].shape, b))
            else:
                counts[name].append(np.asarray(proc.sample_count.get()))
    em.sink.stop()  # not in a finally: after a failed run Lava's stop() blocks forever
    return RefResult(np.concatenate(readouts)[:n],
                     {k: np.concatenate(v)[:n].astype(np.int64) for k, v in counts.items()})


def _set_biases(lg, em, dyn, fixed, b) -> None:
    for name, d in dyn.items():
        if name not in em.neurons:
            continue
        p = lg.populations[name]
        total = np.broadcast_to(p.bias, (b,) + p.shape) + d
        if fixed is None:
            em.neurons[name].bias.set(to_lava(total, p.shape))
        else:
            mant, exp = fixed[name].quantize_bias(total)
            em.neurons[name].bias.set(to_lava(mant, p.shape))
            em.neurons[name].bias_exp.set(to_lava(exp, p.shape))
