"""A character-level language model: text in, a trained model and samples out.

The text is cut into ``batch`` parallel streams; truncated BPTT runs along them, carrying
each stream's state from one window to the next, so a sequence of any length is learned with
the memory of ``k2`` steps.

The model reads each character through an ``Embedding`` (character ids -> vectors of
``embedding_dim``) rather than as a one-hot vector: the same function class (a one-hot row
times ``weight_ih`` is a learned vector per character too), with a smaller input projection
and no one-hot arrays to build: on the default configuration an epoch takes about 3/4 of the
one-hot model's time. Checkpoints of the earlier one-hot models still load and resume:
``model_input`` feeds them one-hot rows.
"""

import math
import time

import numpy as np

from . import checkpoint, optim
from .embedding import Embedding
from .gru import GRU
from .linear import Linear
from .lstm import LSTM
from .model import Model
from .rnn import RNN
from .train import train_sequence

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
OPTIMISERS = {"sgd": optim.SGD, "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop,
              "adam": optim.Adam, "adamw": optim.AdamW}


def default_text():
    """The text of Python's own help topics: it ships with every CPython (~465 KB)."""
    from pydoc_data.topics import topics
    return "".join(topics[k] for k in sorted(topics))


class Vocabulary:
    """The characters of a text, each with an index."""

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def one_hot(ids, size, dtype):
    out = np.zeros(ids.shape + (size,), dtype=dtype)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


def model_input(model, ids):
    """What ``model`` reads for the character ids (B, T): the ids themselves when it starts
    with an embedding; their one-hot rows (B, T, V) for a model without one, as checkpoints
    written before the embedding have."""
    if model.embedding is not None:
        return ids
    return one_hot(ids, model.recurrent.input_size, model.dtype)


def streams(ids, batch):
    """``ids`` cut into ``batch`` rows of equal length (the tail that does not fit is dropped)."""
    length = len(ids) // batch
    if length < 2:
        raise ValueError(f"the text is too short for {batch} streams: {len(ids)} characters")
    return ids[:batch * length].reshape(batch, length)


def check_model_options(layers, dropout, bidirectional):
    """Refuse, with the reason, the recurrent options that no character model can use."""
    if bidirectional:
        raise ValueError(
            "a character language model cannot be bidirectional: the reverse direction reads "
            "the text from its end, so at every step it has already seen the next character, "
            "the one the model must predict, and the loss would fall without the model "
            "learning to predict anything (a bidirectional model suits a classifier that reads "
            "the whole text first: examples/text_classifier.py)")
    if dropout > 0 and layers < 2:
        raise ValueError(f"dropout acts between stacked layers, so it needs layers >= 2, got "
                         f"dropout={dropout} with layers={layers}")


def build_model(cell, vocab_size, hidden, layers, dtype, seed, *, embedding_dim=32,
                dropout=0.0, bidirectional=False):
    """Embedding (vocab_size -> embedding_dim) -> ``cell`` stack -> Linear (-> vocab_size).

    Raises ValueError for the options ``check_model_options`` refuses.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    check_model_options(layers, dropout, bidirectional)
    recurrent = CELLS[cell](embedding_dim, hidden, num_layers=layers, dropout=dropout,
                            dtype=dtype, seed=seed)
    return Model(recurrent, Linear(hidden, vocab_size, dtype=dtype, seed=seed + 1),
                 embedding=Embedding(vocab_size, embedding_dim, dtype=dtype, seed=seed + 2))


def epoch(model, optimizer, data, *, k1, k2, windows_per_call=8, clip_norm=None,
          clip_value=None, progress=True, desc="train"):
    """One pass of truncated BPTT along the streams ``data`` (B, L); returns the mean loss
    (nats per character) and characters per second."""
    B, L = data.shape
    span = k1 * windows_per_call  # steps handed to train_sequence at once, state carried across
    state, total, count = None, 0.0, 0
    start = time.perf_counter()
    bar = range(0, L - 1, span)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc=desc, unit="chunk")
    for s in bar:
        e = min(s + span, L - 1)
        out = train_sequence(model, optimizer, model_input(model, data[:, s:e]),
                             data[:, s + 1:e + 1], state=state, k1=k1, k2=k2,
                             clip_norm=clip_norm, clip_value=clip_value)
        state = out["state"]
        if out["updates"]:
            total += out["loss"] * (e - s)
            count += e - s
        if progress:
            rate = count * B / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}", chars_per_s=f"{rate:.3g}",
                            refresh=False)
    seconds = time.perf_counter() - start
    return total / max(count, 1), count * B / seconds


def evaluate(model, data, chunk=256):
    """Mean loss (nats per character) of predicting each next character along the streams."""
    B, L = data.shape
    state, total, count = None, 0.0, 0
    for s in range(0, L - 1, chunk):
        e = min(s + chunk, L - 1)
        logits, state = model(model_input(model, data[:, s:e]), state)
        target = data[:, s + 1:e + 1]
        shifted = logits - logits.max(-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(log_p, target[..., None], -1).sum())
        count += target.size
    return total / max(count, 1)


def sample(model, vocab, length, *, prime="\n", temperature=0.8, seed=0):
    """``length`` characters drawn from the model after reading ``prime``."""
    rng = np.random.default_rng(seed)
    ids = vocab.encode(prime)
    logits, state = model(model_input(model, ids[None, :]))
    last, out = logits[0, -1], []
    for _ in range(length):
        z = last.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        i = int(rng.choice(len(p), p=p / p.sum()))
        out.append(i)
        logits, state = model(model_input(model, np.array([[i]])), state)
        last = logits[0, -1]
    return vocab.decode(out)


def bits(nats):
    return nats / math.log(2)


def train(text, *, cell="lstm", hidden=128, layers=1, embedding_dim=32, dropout=0.0,
          bidirectional=False, batch=16, k1=32, k2=None, optimizer="adam", lr=3e-3,
          clip_norm=5.0, clip_value=None, epochs=2, seed=0, dtype=np.float32,
          checkpoint_path=None, resume=False, sample_length=300, temperature=0.8,
          valid_fraction=0.05, progress=True, log=print):
    """Train a character model on ``text``; returns (model, vocabulary, history).

    With ``resume``, the model (its cell, sizes, dropout) is the checkpoint's, and the
    arguments that describe a model are not used; a one-hot model of an older checkpoint
    resumes as one.
    """
    check_model_options(layers, dropout, bidirectional)  # before a long read of the text
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    n_valid = int(len(ids) * valid_fraction)
    train_ids, valid_ids = ids[:len(ids) - n_valid], ids[len(ids) - n_valid:]
    train_data = streams(train_ids, batch)
    valid_data = streams(valid_ids, min(batch, max(1, len(valid_ids) // 1000))) \
        if n_valid >= 2 else None

    if optimizer not in OPTIMISERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMISERS)}, got {optimizer!r}")
    first_epoch = 0
    if resume:
        ck = checkpoint.load(checkpoint_path)
        if ck.metadata.get("vocabulary") != vocab.chars:
            raise ValueError(f"{checkpoint_path} was trained on another text (its vocabulary "
                             f"differs); train afresh or pass the same --text")
        model = ck.model
        opt = OPTIMISERS[ck.optimizer_state["type"].lower()](model.params, lr=lr)
        opt.load_state_dict(ck.optimizer_state)
        first_epoch = ck.epoch
        log(f"resumed from {checkpoint_path} after epoch {first_epoch}"
            + ("" if model.embedding is not None else
               " (a model with one-hot input, from before the embedding: it keeps it)"))
    else:
        model = build_model(cell, len(vocab), hidden, layers, dtype, seed,
                            embedding_dim=embedding_dim, dropout=dropout)
        opt = OPTIMISERS[optimizer](model.params, lr=lr)
    log(f"{model}\n{len(text):,} characters, {len(vocab)} distinct; {batch} streams of "
        f"{train_data.shape[1]:,} steps; truncated BPTT(k1={k1}, k2={k2 or k1}); {opt!r}")

    history = []
    for ep in range(first_epoch, first_epoch + epochs):
        loss, rate = epoch(model, opt, train_data, k1=k1, k2=k2, clip_norm=clip_norm,
                           clip_value=clip_value, progress=progress, desc=f"epoch {ep + 1}")
        record = {"epoch": ep + 1, "loss": loss, "bits_per_char": bits(loss),
                  "chars_per_second": rate}
        if valid_data is not None:
            record["val_loss"] = evaluate(model, valid_data)
            record["val_bits_per_char"] = bits(record["val_loss"])
        history.append(record)
        log(f"epoch {ep + 1}: train {bits(loss):.3f} bits/char"
            + (f", validation {record['val_bits_per_char']:.3f} bits/char"
               if valid_data is not None else "") + f", {rate:,.0f} chars/s")
        if checkpoint_path:
            checkpoint.save(checkpoint_path, model, opt, epoch=ep + 1,
                            metadata={"vocabulary": vocab.chars, "history": history})
        if sample_length:
            log("sample:\n" + sample(model, vocab, sample_length, temperature=temperature,
                                     seed=seed + ep) + "\n")
    return model, vocab, history
