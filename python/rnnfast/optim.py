"""Optimisers with PyTorch's update formulas and defaults, updating parameters in place::

    opt = rnnfast.optim.Adam(model.params, lr=1e-3)
    ...
    dx, dstate0, grads = model.backward(cache, dy)
    opt.step(grads)

An optimiser holds the dict of live parameter arrays it was given; ``step(grads)`` takes a
dict with the same keys and shapes. Its per-parameter state (momentum, moments) is kept in
arrays of the parameters' dtype and updated in place. ``state_dict()`` / ``load_state_dict()``
save and restore it. Schedules change ``opt.lr`` once per call of their ``step()``.
"""

import math

import numpy as np


class Optimizer:
    """Base class: parameter bookkeeping, checks and state (de)serialisation."""

    # Names of the per-parameter state arrays this optimiser keeps, e.g. ("exp_avg",).
    slots = ()

    def __init__(self, params, lr, **hyper):
        if not isinstance(params, dict) or not params:
            raise TypeError("params must be a non-empty dict of name -> ndarray "
                            "(a model's .params)")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}] must be a floating ndarray")
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)):
            raise TypeError(f"lr must be a float, got {type(lr).__name__}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        for key, value in hyper.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{key} must be >= 0, got {value!r}")
        self.params = params
        self.lr = float(lr)
        self.hyper = hyper
        self.step_count = 0
        self.state = {name: {} for name in params}

    def __getattr__(self, key):  # hyperparameters read as attributes: opt.momentum
        hyper = self.__dict__.get("hyper", {})
        if key in hyper:
            return hyper[key]
        raise AttributeError(key)

    def _slot(self, name, slot, fill=0.0):
        """The state array ``slot`` of parameter ``name``, created on first use."""
        st = self.state[name]
        if slot not in st:
            st[slot] = np.full_like(self.params[name], fill)
        return st[slot]

    def step(self, grads):
        """Update every parameter from ``grads`` (a dict with the keys of ``params``)."""
        if not isinstance(grads, dict):
            raise TypeError(f"grads must be a dict, got {type(grads).__name__}")
        if grads.keys() != self.params.keys():
            missing = sorted(set(self.params) - set(grads))
            extra = sorted(set(grads) - set(self.params))
            raise ValueError(f"grads must have the keys of params; missing {missing}, "
                             f"unexpected {extra}")
        for name, g in grads.items():
            p = self.params[name]
            if not isinstance(g, np.ndarray) or g.dtype.kind not in "fiu":
                # all checked before the first update, so a bad entry changes nothing
                raise TypeError(f"grads[{name!r}] must be a real ndarray of shape {p.shape}, "
                                f"got {g.dtype if isinstance(g, np.ndarray) else type(g).__name__}")
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}] must have shape {p.shape}, got {g.shape}")
        self.step_count += 1
        for name, p in self.params.items():
            self._update(name, p, np.asarray(grads[name], dtype=p.dtype))

    def _update(self, name, p, g):
        raise NotImplementedError

    def state_dict(self):
        """Everything needed to resume: hyperparameters, lr, step count and state arrays."""
        return {"type": type(self).__name__, "lr": self.lr, "hyper": dict(self.hyper),
                "step_count": self.step_count,
                "state": {n: {k: v.copy() for k, v in st.items()} for n, st in self.state.items()}}

    def load_state_dict(self, sd):
        """Restore what ``state_dict`` returned, checking names, shapes and dtypes."""
        if sd.get("type") != type(self).__name__:
            raise ValueError(f"state_dict is for {sd.get('type')!r}, not {type(self).__name__}")
        if set(sd["state"]) != set(self.params):
            raise ValueError("state_dict's parameter names differ from this optimiser's: "
                             f"{sorted(set(sd['state']) ^ set(self.params))}")
        state = {}
        for name, st in sd["state"].items():
            p = self.params[name]
            state[name] = {}
            for slot, value in st.items():
                value = np.asarray(value)
                if slot not in self.slots or value.shape != p.shape or value.dtype != p.dtype:
                    raise ValueError(f"state_dict's {name}.{slot} must be a {p.dtype} array of "
                                     f"shape {p.shape}, got {value.dtype} {value.shape}")
                state[name][slot] = value.copy()
        self.lr = float(sd["lr"])
        # a checkpoint's JSON gives tuples (betas) back as lists
        self.hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in sd["hyper"].items()}
        self.step_count = int(sd["step_count"])
        self.state = state

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}(lr={self.lr!r}, {hyper})"


def _add_weight_decay(g, p, weight_decay):
    # L2 penalty as PyTorch adds it: g + wd * p (a new array, so grads stay as given)
    return g + p.dtype.type(weight_decay) * p if weight_decay else g


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum, Nesterov and weight decay.

    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` on the first step);
    ``g = g + momentum * buf`` with Nesterov, else ``g = buf``; ``p -= lr * g``.
    """

    slots = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _update(self, name, p, g):
        h = self.hyper
        g = _add_weight_decay(g, p, h["weight_decay"])
        if h["momentum"]:
            first = "momentum_buffer" not in self.state[name]
            buf = self._slot(name, "momentum_buffer")
            if first:
                buf[...] = g
            else:
                buf *= p.dtype.type(h["momentum"])
                buf += p.dtype.type(1 - h["dampening"]) * g
            g = g + p.dtype.type(h["momentum"]) * buf if h["nesterov"] else buf
        p -= p.dtype.type(self.lr) * g


class Adagrad(Optimizer):
    """Adagrad: ``sum += g**2``; ``p -= lr_t * g / (sqrt(sum) + eps)``,
    ``lr_t = lr / (1 + (t - 1) * lr_decay)``."""

    slots = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)
        for name in self.params:
            self._slot(name, "sum", initial_accumulator_value)

    def _update(self, name, p, g):
        h = self.hyper
        g = _add_weight_decay(g, p, h["weight_decay"])
        clr = self.lr / (1 + (self.step_count - 1) * h["lr_decay"])
        acc = self._slot(name, "sum")
        acc += g * g
        p -= p.dtype.type(clr) * g / (np.sqrt(acc) + p.dtype.type(h["eps"]))


class RMSprop(Optimizer):
    """RMSprop: ``v = alpha * v + (1 - alpha) * g**2``; ``p -= lr * g / (sqrt(v) + eps)``,
    optionally centred (``v - mean(g)**2``) and with momentum on the scaled step."""

    slots = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__(params, lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _update(self, name, p, g):
        h = self.hyper
        t = p.dtype.type
        g = _add_weight_decay(g, p, h["weight_decay"])
        v = self._slot(name, "square_avg")
        v *= t(h["alpha"])
        v += t(1 - h["alpha"]) * g * g
        if h["centered"]:
            m = self._slot(name, "grad_avg")
            m *= t(h["alpha"])
            m += t(1 - h["alpha"]) * g
            avg = np.sqrt(v - m * m) + t(h["eps"])
        else:
            avg = np.sqrt(v) + t(h["eps"])
        if h["momentum"] > 0:
            buf = self._slot(name, "momentum_buffer")
            buf *= t(h["momentum"])
            buf += g / avg
            p -= t(self.lr) * buf
        else:
            p -= t(self.lr) * g / avg


class Adam(Optimizer):
    """Adam (Kingma & Ba), bias-corrected, optionally AMSGrad; weight decay as an L2 term.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``,
    ``p -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)``.
    """

    slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        super().__init__(params, lr, betas=(float(b1), float(b2)), eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad)

    def _update(self, name, p, g):
        h = self.hyper
        t = p.dtype.type
        b1, b2 = h["betas"]
        if self.decoupled:  # AdamW: shrink the weights, apart from the gradient
            p *= t(1 - self.lr * h["weight_decay"])
        else:
            g = _add_weight_decay(g, p, h["weight_decay"])
        m = self._slot(name, "exp_avg")
        v = self._slot(name, "exp_avg_sq")
        m *= t(b1)
        m += t(1 - b1) * g
        v *= t(b2)
        v += t(1 - b2) * g * g
        bias1 = 1 - b1 ** self.step_count
        bias2_sqrt = math.sqrt(1 - b2 ** self.step_count)
        if h["amsgrad"]:
            v_max = self._slot(name, "max_exp_avg_sq")
            np.maximum(v_max, v, out=v_max)
            v = v_max
        denom = np.sqrt(v) / t(bias2_sqrt) + t(h["eps"])
        p -= t(self.lr / bias1) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step. PyTorch's default weight_decay of 0.01."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# -- learning-rate schedules ------------------------------------------------------------------

class _Schedule:
    """Sets ``optimizer.lr`` from the number of times ``step()`` was called (epochs)."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an rnnfast.optim optimiser, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def step(self):
        """Count one more epoch and set ``optimizer.lr`` to ``lr_at`` it; returns the new lr."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)
        return self.optimizer.lr

    def state_dict(self):
        """``base_lr`` and ``last_epoch``, for a checkpoint (``rnnfast.save(schedule=...)``)."""
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, sd):
        """Restore what ``state_dict`` returned, and set ``optimizer.lr`` to match."""
        self.base_lr = float(sd["base_lr"])
        self.last_epoch = int(sd["last_epoch"])
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(_Schedule):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        if not (isinstance(step_size, int) and step_size >= 1):
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        self.step_size, self.gamma = step_size, gamma

    def lr_at(self, epoch):
        """The learning rate after ``epoch`` calls of ``step()``."""
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(_Schedule):
    """``lr = base_lr * gamma ** epoch``."""

    def __init__(self, optimizer, gamma):
        super().__init__(optimizer)
        self.gamma = gamma

    def lr_at(self, epoch):
        """The learning rate after ``epoch`` calls of ``step()``."""
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(_Schedule):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        if not (isinstance(T_max, int) and T_max >= 1):
            raise ValueError(f"T_max must be an int >= 1, got {T_max!r}")
        self.T_max, self.eta_min = T_max, eta_min

    def lr_at(self, epoch):
        """The learning rate after ``epoch`` calls of ``step()``."""
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2
