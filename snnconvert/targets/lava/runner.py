"""Run a layer graph on Lava's CPU simulator: B samples side by side, K batches one after another.

The graph is built and compiled once per segment of K batches; every batch's input-driven
current is preloaded as a bias bank (one per step for per-step input: frames, spike trains, rate
codes; see :mod:`.inputs`), so nothing is written into the running graph (Lava's Var.set moves
one element per message). Pipelined resets (interval T+D) wipe neuron state and
stale synapse buffers and switch banks, so every window of T+D steps equals an independent
zero-delay simulation of its batch.
"""
from __future__ import annotations

import numpy as np

from .emit import emit, from_lava, lava_shape, run_config
from .fixed import FixedLayer
from .lowering import LayerGraph
from .inputs import input_currents, output_current_mean, per_step
from .reference import RefResult

BANK_BYTES = 256 << 20  # preloaded input currents per compiled graph
CHANNEL_SLOTS = 4
"""Messages each Lava channel can hold. Lava's default, 64, makes every channel 64 arrays of
B x neurons in shared memory (ResNet-20 at batch 50: over 16 GB of /dev/shm); processes step in
lock-step, so a message or two is ever in flight."""


DELAY_MATRIX_ELEMENTS = 4_000_000
"""Largest B^2 * out * in * (D + 1) of a DelayDense: Lava's model builds one weight matrix per
delay value, every step, over the block-diagonal weights of the B samples side by side."""


def delay_batch_limit(lg: LayerGraph) -> int:
    """Samples side by side that keep every DelayDense's per-step matrices near the limit."""
    sizes = [o.weight.size * (o.max_delay + 1) for p in lg.populations.values() for t in p.terms
             for o in t.ops if o.kind == "delay"]
    if not sizes:
        return 1 << 30
    return max(1, int((DELAY_MATRIX_ELEMENTS / max(sizes)) ** 0.5))


def run_lava(lg: LayerGraph, x: np.ndarray, timesteps: int,
             fixed: dict[str, FixedLayer] | None = None, batch_size: int = 100,
             progress: bool = False, neuron_counts: bool = False,
             readout_steps: tuple[int, int] | None = None, count_readout: str | None = None
             ) -> RefResult:
    """Simulate ``x`` in Lava; returns read-out and spike counts.

    ``x`` is the graph input of the run (:func:`.inputs.step_input`): [N, *input], constant, or
    [N, T, *input], one input per step. ``readout_steps`` (first step, count): the steps whose
    output the read-out averages (all T by default); ``count_readout``: the population whose
    per-neuron spike counts are the read-out instead (the ``spikes`` readout). Counts are per neuron [N, *shape] when
    ``neuron_counts`` (read back packed, several counts per element, because Lava's Var.get
    moves one element per message), else per sample [N].
    """
    n = x.shape[0]
    batch_size = min(batch_size, delay_batch_limit(lg))
    chunks = -(-n // max(1, min(batch_size, n)))
    b = -(-n // chunks)  # even batches: the least padding for this number of runs
    xp = np.zeros((chunks * b,) + x.shape[1:], np.float64)
    xp[:n] = x
    banks = timesteps if per_step(lg, x) else 1
    per_batch = sum(8 * b * banks * int(np.prod(p.shape)) for p in lg.populations.values() if p.input_ops)
    k = max(1, min(chunks, BANK_BYTES // max(per_batch, 1)))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="lava", unit="img")
    parts = []
    for start in range(0, chunks, k):
        stop = min(chunks, start + k)
        parts.append(_run_segment(lg, xp[start * b:stop * b], b, timesteps, fixed, neuron_counts,
                                  bar, n - start * b, readout_steps or (0, timesteps), count_readout))
    if bar is not None:
        bar.close()
    readout = np.concatenate([p.readout for p in parts])[:n]
    counts = {name: np.concatenate([p.counts[name] for p in parts])[:n].astype(np.int64)
              for name in parts[0].counts}
    return RefResult(readout, counts)


def _banks(current: np.ndarray, k: int, b: int, steps: int) -> np.ndarray:
    """[k*b, (steps,) *shape] -> [k*steps, b, *shape]: bank (batch c, step t) at c*steps + t."""
    if steps == 1:
        return current.reshape((k, b) + current.shape[1:])
    c = current.reshape((k, b, steps) + current.shape[2:])
    return np.swapaxes(c, 1, 2).reshape((k * steps, b) + current.shape[2:])


def _run_segment(lg: LayerGraph, x: np.ndarray, b: int, timesteps: int,
                 fixed: dict[str, FixedLayer] | None, neuron_counts: bool, bar,
                 remaining: int, readout_steps: tuple[int, int], count_readout: str | None
                 ) -> RefResult:
    """One compiled graph running the len(x) // b batches of ``x`` back to back."""
    from lava.magma.core.run_conditions import RunSteps

    from .procs.if_neuron import unpack_counts

    k = x.shape[0] // b
    steps = per_step(lg, x)
    banks = timesteps if steps else 1
    currents = input_currents(lg, x)
    out_pop = lg.output
    first, count = readout_steps
    out_dyn = currents.pop(out_pop.name, None)
    if out_dyn is not None:
        out_dyn = output_current_mean(out_dyn, steps, first, count).reshape((k, b) + out_pop.shape)
    dyn = {name: _banks(d, k, b, banks) for name, d in currents.items()}
    del currents
    packed = neuron_counts or ({count_readout} if count_readout else False)
    em = emit(lg, b, timesteps, fixed, dyn, pack_counts=packed, bank_steps=banks,
              readout_steps=readout_steps)
    del dyn
    cfg = run_config(fixed is not None)
    gain = fixed[out_pop.name].gain if fixed else 1.0
    readouts, counts = [], {name: [] for name in em.neurons}
    for c in range(k):
        em.sink.run(condition=RunSteps(num_steps=em.interval), run_cfg=cfg,
                    compile_config={"pypy_channel_size": CHANNEL_SLOTS})
        total = from_lava(np.asarray(em.sink.total.get(), np.float64), out_pop.shape, b)
        r = total / (count * gain) + out_pop.bias
        readouts.append(r + out_dyn[c] if out_dyn is not None else r)
        for name, proc in em.neurons.items():
            if neuron_counts or name == count_readout:
                shape = lg.populations[name].shape
                flat = unpack_counts(proc.packed_counts.get(), b * int(np.prod(shape)), timesteps)
                per_neuron = from_lava(flat.reshape(lava_shape(shape, b)), shape, b)
                if name == count_readout:
                    readouts[-1] = per_neuron.astype(np.float64)
                counts[name].append(per_neuron if neuron_counts else per_neuron.reshape(b, -1).sum(1))
            else:
                counts[name].append(np.asarray(proc.sample_count.get()))
        if bar is not None:
            bar.update(max(0, min(b, remaining - c * b)))
    em.sink.stop()  # not in a finally: after a failed run Lava's stop() blocks forever
    return RefResult(np.concatenate(readouts), {n: np.concatenate(v) for n, v in counts.items()})
