"""Run layer calls and a training step with the kernel this process chose, for
tests/test_kernels.py, which runs this script in a subprocess (under an emulated CPU, or with
RNNFAST_KERNEL set) and compares what it saves with a run on the real CPU.

    python tests/kernel_step.py INPUT.npz OUTPUT.npz

INPUT holds the data and the initial weights (made by the parent, so that nothing here
depends on how this CPU runs NumPy); OUTPUT gets the kernel's name and, per case, the layer's
outputs and gradients (from the compiled core alone) and the weights after one Adam step of a
whole model (which also runs NumPy's products and elementwise functions).
"""

import sys

import numpy as np

import rnnfast

CASES = {  # name -> (class, constructor arguments)
    "lstm": (rnnfast.LSTM, {"num_layers": 2, "bidirectional": True}),
    "gru": (rnnfast.GRU, {"num_layers": 2}),
    "rnn": (rnnfast.RNN, {"nonlinearity": "tanh"}),
}
D, H, C = 6, 16, 5


def layer(cls, kw, dtype, data):
    model = cls(D, H, dtype=dtype, seed=0, **kw)
    for name, value in model.params.items():
        value[...] = data[f"{cls.__name__}.{name}"]
    x = data["x"].astype(dtype)
    y, state, cache = model.forward(x, lengths=data["lengths"])
    dx, dstate0, grads = model.backward(cache, data["dy"][..., :y.shape[-1]].astype(dtype))
    out = {"y": y, "dx": dx, **{f"d{k}": v for k, v in grads.items()}}
    for i, part in enumerate(state if isinstance(state, tuple) else (state,)):
        out[f"state{i}"] = part
    return model, out


def step(model, dtype, data):
    readout = rnnfast.Linear(model.output_size, C, dtype=dtype, seed=1)
    readout.params["weight"][...] = data["readout"][:, :model.output_size]
    net = rnnfast.Model(model, readout)
    optimizer = rnnfast.optim.Adam(net.params, lr=1e-2)
    result = rnnfast.train_sequence(net, optimizer, data["x"].astype(dtype), data["targets"],
                                    data["lengths"])
    return {"loss": np.array(result["loss"]), **{f"after.{k}": v for k, v in net.params.items()}}


def main(src, dst):
    data = dict(np.load(src))
    saved = {"kernel": np.array(rnnfast.build_info()["kernel"])}
    for case, (cls, kw) in CASES.items():
        for dtype in (np.float64, np.float32):
            model, out = layer(cls, kw, dtype, data)
            out.update(step(model, dtype, data))
            saved.update({f"{case}.{np.dtype(dtype).name}.{k}": v for k, v in out.items()})
    np.savez(dst, **saved)


if __name__ == "__main__":
    main(*sys.argv[1:])
